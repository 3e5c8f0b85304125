#!/usr/bin/env bash
# The GPU checks (tests/gpu) on a machine whose python3 has PyTorch with CUDA but not the
# rest of Nimbus's packages, and no network: the GPU machine a session is sometimes lent
# (its image: Python 3.12, torch 2.11+cu130). Run from the repository root; writes its logs
# to $OUT (default /tmp/gpu-out).
#
# It needs, beside the tree, .whl/ (git-ignored):
#   - cp312 wheels of what that python lacks, the versions of this checkout's .venv:
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 ... -d .whl \
#         fastapi==... starlette==... (the list: see the closing note of issue 11)
#   - ray-stripped.zip: Ray's cp312 wheel less what no Nimbus node runs (jars, rllib, tune,
#     train, data, serve, the dashboard's web client): the whole wheel (79 MB) is more than
#     the 64 MiB a call to that machine may carry;
#   - bin/bwrap: Debian's bubblewrap, for the checks in the job sandbox.
# The packages are unpacked to /opt/nimbus/site and, with a copy of src/, put on python3's
# path by a .pth file: jobs run with a scrubbed environment, where PYTHONPATH would not
# reach them.
set -u
OUT=${OUT:-/tmp/gpu-out}
PARTS=${PARTS:-"gpu nccl sandbox ray"}  # which of the checks below to run
part() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT"
say() { printf '\n== %s\n' "$*"; }
T0=$(date +%s)

say machine
nvidia-smi -L
ls /proc/driver/nvidia/gpus /dev/nvidia* 2>&1 | tr '\n' ' '
echo
echo "cpus $(nproc); $(python3 -V); cgroup: $(stat -fc %T /sys/fs/cgroup)"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available(), torch.cuda.device_count())"

say packages
rm -rf /opt/nimbus && mkdir -p /opt/nimbus/bin && chmod 755 /opt/nimbus
cp -r src /opt/nimbus/src
cp .whl/bin/bwrap /opt/nimbus/bin/ && chmod 755 /opt/nimbus/bin/bwrap
python3 - <<'EOF' || exit 1
import glob, os, site, sys, zipfile
dest = "/opt/nimbus/site"
for wheel in sorted(glob.glob(".whl/*.whl") + glob.glob(".whl/*.zip")):
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = archive.extract(info, dest)
            if (info.external_attr >> 16) & 0o111:  # Ray's daemons are executables
                os.chmod(path, 0o755)
lines = f"{dest}\n/opt/nimbus/src\n"
target = os.path.join(site.getsitepackages()[0], "zz-nimbus-device.pth")
with open(target, "w") as f:
    f.write(lines)
print("unpacked", len(os.listdir(dest)), "entries; path file", target)
EOF
python3 -m compileall -q -j 0 /opt/nimbus/src /opt/nimbus/site >/dev/null 2>&1
python3 -c "import nimbus.server, ray, fastapi; print('imports ok, ray', ray.__version__)" || exit 1
echo "setup took $(($(date +%s) - T0)) s"

# pytest's warnings plugin off: this image's packages are not the project's pins, and their
# deprecation notices are not what is checked here.
PYTEST=(python3 -m pytest -p no:cacheprovider -p no:warnings -q -rA --durations=8)

if part gpu; then
    say "GPU checks, jobs unsandboxed (NIMBUS_JOB_ISOLATION=none)"
    timeout 200 "${PYTEST[@]}" tests/gpu 2>&1 | tee "$OUT/gpu-unsandboxed.log" | tail -40
fi

part nccl && say "nccl: two processes on the one GPU (what 2 workers on 1 GPU would need)" &&
timeout 60 python3 - <<'EOF' 2>&1 | grep -iE "nccl|duplicate|rank|error" | grep -v "^ *File" | head -12
import os
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def run(rank: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=rank, world_size=2)
    t = torch.full((1,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    print(f"rank {rank}: all_reduce gave {t.item()}", flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    print("nccl", torch.cuda.nccl.version())
    mp.spawn(run, nprocs=2)
EOF

if part sandbox; then
    say "GPU checks in the job sandbox (bubblewrap)"
    ls -ld / /opt /opt/torch /opt/torch/.venv "$(readlink -f "$(command -v python3)")" "$PWD"
    setpriv --reuid 65534 --regid 65534 --clear-groups python3 -c \
        "import torch, nimbus.runtime.entry; print('an unprivileged uid imports torch and nimbus')"
    PATH=/opt/nimbus/bin:$PATH timeout 150 "${PYTEST[@]}" tests/gpu 2>&1 \
        | tee "$OUT/gpu-sandboxed.log" | grep -vE "^(E   |    |tests/|_+ )" | tail -30
    say "the sandbox's own tests on this machine (CPU)"
    PATH=/opt/nimbus/bin:$PATH timeout 120 "${PYTEST[@]}" tests/jobs/test_isolation.py 2>&1 \
        | tee "$OUT/sandbox.log" | tail -12
fi

if part ray; then
    say "the Ray executor's own tests on this GPU machine"
    timeout 120 "${PYTEST[@]}" tests/ray/test_ray_executor.py 2>&1 \
        | tee "$OUT/ray-executor.log" | tail -15
fi
echo "all took $(($(date +%s) - T0)) s"
