#!/usr/bin/env python3
"""Creates the benchmark data set of scripts/bench.sh in DATA_DIR, once.

    gen-data.py DATA_DIR SEQ_MIB PAR_MIB DROP_MIB

Each part is created only when its marker file (.done-NAME) is missing, so a second run
costs nothing and an interrupted one is completed:

  seq-{SEQ_MIB}m.bin           one big random file (sequential, warm and random reads)
  par-{PAR_MIB}m-{1..4}.bin    four random files for the parallel workload
  cached-{DROP_MIB}m.bin       a file smaller than ftpsfs's block cache (re-read after drop_caches)
  tree/aNN/bNN/fNN.txt         10 × 20 leaf directories × 50 files = 10,000 files in 211 dirs
  dir5000/fNNNN.txt            5,000 files in one directory
  small/NN/fNNNN.bin           2,000 random files of 4-64 KiB in 20 directories

Random content comes from os.urandom (incompressible, like real data on the wire); the
sizes and names come from a fixed seed, so every machine gets the same tree.
"""
import os
import random
import sys

CHUNK = 8 << 20


def done(data, name):
    return os.path.exists(os.path.join(data, f".done-{name}"))


def mark(data, name):
    with open(os.path.join(data, f".done-{name}"), "w") as f:
        f.write("ok\n")


def random_file(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        left = size
        while left > 0:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n
    os.rename(tmp, path)


def main():
    data, seq_mib, par_mib, drop_mib = sys.argv[1], *map(int, sys.argv[2:5])
    os.makedirs(data, exist_ok=True)

    name = f"seq-{seq_mib}m"
    if not done(data, name):
        print(f"gen-data: {name}.bin", flush=True)
        random_file(os.path.join(data, f"{name}.bin"), seq_mib << 20)
        mark(data, name)

    name = f"par-{par_mib}m"
    if not done(data, name):
        print(f"gen-data: {name}-1..4.bin", flush=True)
        for i in range(1, 5):
            random_file(os.path.join(data, f"{name}-{i}.bin"), par_mib << 20)
        mark(data, name)

    name = f"cached-{drop_mib}m"
    if not done(data, name):
        print(f"gen-data: {name}.bin", flush=True)
        random_file(os.path.join(data, f"{name}.bin"), drop_mib << 20)
        mark(data, name)

    rng = random.Random(20261127)
    if not done(data, "tree"):
        print("gen-data: tree/ (10,000 files in 211 directories)", flush=True)
        for a in range(10):
            for b in range(20):
                d = os.path.join(data, "tree", f"a{a:02d}", f"b{b:02d}")
                os.makedirs(d, exist_ok=True)
                for i in range(50):
                    with open(os.path.join(d, f"f{i:02d}.txt"), "w") as f:
                        f.write(f"a{a} b{b} f{i}\n" * rng.randint(1, 40))
        mark(data, "tree")

    if not done(data, "dir5000"):
        print("gen-data: dir5000/ (5,000 files)", flush=True)
        d = os.path.join(data, "dir5000")
        os.makedirs(d, exist_ok=True)
        for i in range(5000):
            with open(os.path.join(d, f"f{i:04d}.txt"), "w") as f:
                f.write(f"{i}\n")
        mark(data, "dir5000")

    if not done(data, "small"):
        print("gen-data: small/ (2,000 files of 4-64 KiB)", flush=True)
        for i in range(2000):
            d = os.path.join(data, "small", f"{i // 100:02d}")
            os.makedirs(d, exist_ok=True)
            size = rng.randint(4 << 10, 64 << 10)
            with open(os.path.join(d, f"f{i:04d}.bin"), "wb") as f:
                f.write(os.urandom(size))
        mark(data, "small")


if __name__ == "__main__":
    main()
