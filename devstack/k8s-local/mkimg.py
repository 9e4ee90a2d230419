"""Build a docker-archive (`docker save` format) tarball from a root filesystem folder.

    python3 mkimg.py NAME ROOTFS OUT.tar '["cmd", "arg"]'

One layer, owned by root, mtimes zeroed (the same folder always gives the same image id).
"""

import hashlib
import io
import json
import os
import sys
import tarfile


def layer_tar(rootfs: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, dirs, files in os.walk(rootfs):
            dirs.sort()
            files.sort()
            for name in dirs + files:
                path = os.path.join(folder, name)
                info = tar.gettarinfo(path, os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                if info.isfile():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    return buffer.getvalue()


def main(name: str, rootfs: str, out: str, cmd: list[str]) -> None:
    layer = layer_tar(rootfs)
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
        "history": [{"created_by": "k8s-local mkimg.py"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config_bytes = json.dumps(config).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": config_id + ".json", "RepoTags": [name], "Layers": ["layer.tar"]}]
    with tarfile.open(out, "w") as tar:
        for member, data in ((config_id + ".json", config_bytes), ("layer.tar", layer),
                             ("manifest.json", json.dumps(manifest).encode())):  # fmt: skip
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    print(out, name, diff)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
