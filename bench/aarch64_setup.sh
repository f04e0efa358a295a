#!/bin/bash
# An aarch64 Python 3.11 with torch 2.13.0 (and fastgpt's other dependencies) under QEMU user-mode
# emulation, on a Debian 12 amd64 host (root), in $ARM_ROOT (default /tmp/arm): for running fastgpt
# on ARM where no ARM machine exists. Then: $ARM_ROOT/run.sh script.py (PYTHONPATH is kept, after the
# guest's site-packages). bench/aarch64_qemu.sh runs it, then builds and runs fastgpt there.
#
# Copied from the project's shared tools (aarch64-qemu.sh, outside the repository) and fixed when
# first re-run from scratch: apt-get update before the first install; unzip, the cross compiler and
# pip installed when missing; fastgpt's runtime dependencies (tqdm, matplotlib, tokenizers) downloaded
# too; run.sh keeps the caller's PYTHONPATH; the torch .pyc files are compiled only by a host Python
# 3.11 (another version's would not be read).
#
# Facts found while making it:
# - binfmt_misc is not mounted here: start every aarch64 program through qemu-aarch64-static -L.
# - PyPI's aarch64 torch wheel is a CUDA build: its CUDA runtime wheels must be present (not used).
# - torch's cpuinfo reads /proc/cpuinfo; the host's x86 one crashes it: a fake one lives in the sysroot.
# - PYTHONDONTWRITEBYTECODE doubles import time (26 s -> 12 s without it).
# - About 0.5 GFLOP/s emulated; `import torch` takes ~12-40 s (more on a busy host).
# - A torch extension cross-compiles with aarch64-linux-gnu-g++ against $ARM_ROOT/site/torch
#   (-I include, -L lib -lc10 -ltorch -ltorch_cpu -ltorch_python, -idirafter
#   $ARM_ROOT/sysroot/usr/include, python headers from the sysroot): see bench/aarch64_qemu.sh.
# Disk: about 2.8 GB of wheels, 5 GB unpacked.
set -euo pipefail
A=${ARM_ROOT:-/tmp/arm}; mkdir -p $A/debs $A/sysroot $A/site $A/wheels
dpkg --add-architecture arm64 && apt-get update  # the arm64 lists only; nothing arm64 gets installed
apt-get install -y qemu-user-static g++-aarch64-linux-gnu unzip  # qemu 7.2; faster than 10.0 from backports here
python3 -m pip --version >/dev/null 2>&1 || apt-get install -y python3-pip
cd $A/debs && apt-get download python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 \
  python3.11:arm64 libpython3.11-dev:arm64 libc6:arm64 libstdc++6:arm64 libgcc-s1:arm64 zlib1g:arm64 libffi8:arm64 \
  libssl3:arm64 libexpat1:arm64 libbz2-1.0:arm64 liblzma5:arm64 libsqlite3-0:arm64 libncursesw6:arm64 libtinfo6:arm64 \
  libreadline8:arm64 libuuid1:arm64 libnsl2:arm64 libtirpc3:arm64 libgssapi-krb5-2:arm64 libkrb5-3:arm64 \
  libk5crypto3:arm64 libcom-err2:arm64 libkrb5support0:arm64 libkeyutils1:arm64 libdb5.3:arm64 libcrypt1:arm64 \
  libgomp1:arm64 media-types
for d in $A/debs/*.deb; do dpkg -x $d $A/sysroot; done
# fake aarch64 /proc/cpuinfo (qemu -L prefers files under the sysroot); without it cpuinfo_arm_linux_init segfaults
mkdir -p $A/sysroot/proc
for i in 0 1; do printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' $i; done > $A/sysroot/proc/cpuinfo
for c in 0 1; do mkdir -p $A/sysroot/sys/devices/system/cpu/cpu$c/regs/identification
  echo 0x00000000413fd0c1 > $A/sysroot/sys/devices/system/cpu/cpu$c/regs/identification/midr_el1; done
PL=""; for v in $(seq 17 36); do PL="$PL --platform manylinux_2_${v}_aarch64"; done
python3 -m pip download --only-binary=:all: $PL --platform manylinux2014_aarch64 --python-version 3.11 \
  --implementation cp --abi cp311 --abi abi3 --abi none -d $A/wheels \
  torch==2.13.0 numpy tqdm matplotlib tokenizers  # ~2.8 GB incl. CUDA 13 runtime wheels
for w in $A/wheels/*.whl; do unzip -q -o $w -d $A/site; done
# host 3.11 pyc == guest 3.11 pyc: import 26 s -> 12 s
if python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  python3 -m compileall -q -j2 $A/site/torch >/dev/null || true
fi
cat > $A/run.sh <<EOR
#!/bin/sh
PYTHONPATH=$A/site\${PYTHONPATH:+:\$PYTHONPATH} exec env -u PYTHONDONTWRITEBYTECODE qemu-aarch64-static -cpu neoverse-n1 -L $A/sysroot $A/sysroot/usr/bin/python3.11 "\$@"
EOR
chmod +x $A/run.sh
