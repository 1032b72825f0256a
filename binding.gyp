{
  "targets": [
    {
      "target_name": "blocklayer_seek",
      "sources": ["native/seek.c", "native/engine.c", "native/uring.c", "native/threads.c"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-lpthread"]
    }
  ]
}
