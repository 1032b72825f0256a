{
  "targets": [
    {
      "target_name": "blocklayer_seek",
      "sources": ["native/seek.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
