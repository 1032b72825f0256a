{
  "variables": {
    "zlib_a": "<!(${CC:-cc} -print-file-name=libz.a)"
  },
  "targets": [
    {
      "target_name": "blocklayer_seek",
      "sources": ["native/seek.c", "native/engine.c", "native/uring.c", "native/threads.c", "native/inline.c", "native/zlib.c", "native/memalign.c", "native/sendfile.c"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-lpthread"],
      "conditions": [
        ["zlib_a != 'libz.a'", {
          "defines": ["BLK_HAVE_ZLIB"],
          "libraries": ["<(zlib_a)", "-Wl,--exclude-libs,libz.a"]
        }]
      ]
    }
  ]
}
