{
  "targets": [
    {
      "target_name": "tetrix",
      "sources": ["addon.c", "spawn.c", "spawn-napi.c", "exit.c", "mount.c", "notify.c", "channel.c", "net.c", "seccomp.c", "idmap.c", "fsops.c", "archive.c", "extract.c", "output.c", "exec.c", "overlay.c", "loop.c", "fscrypt.c", "chunker.c", "tree-pack.c", "aead.c", "netns-listen.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration", "-O2"],
      "libraries": ["-lnftables", "-lseccomp"]
    },
    {
      "target_name": "tetrix-init",
      "type": "executable",
      "sources": ["init.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
      "ldflags": ["-static"]
    }
  ]
}
