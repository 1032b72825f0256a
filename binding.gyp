{
  "targets": [
    {
      "target_name": "blocklayer_seek",
      "sources": ["native/seek.c"]
    }
  ]
}
