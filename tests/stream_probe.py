"""Run under `accelerate launch` (or plain python) by test_train_fcl.py: each rank reads one training epoch of the
shards in argv[1] through timm_fcl.data with its real rank and world size, and writes the sample hashes it saw."""
import hashlib
import json
import sys

import torch
from accelerate import PartialState
from torchvision.transforms import ToTensor

from timm_fcl.data import EpochStream, create_source, make_loader

root, out, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
state = PartialState(cpu=True)
source = create_source("wds/toy", root, "train")
seen = {}
for workers in (0, 2):
    stream = EpochStream(source, transform=ToTensor(), is_training=True, seed=3, batch_size=batch_size,
                         num_workers=workers, rank=state.process_index, world_size=state.num_processes)
    stream.set_epoch(1)
    hashes, batches = [], 0
    for x, _ in make_loader(stream, num_workers=workers):
        batches += 1
        hashes += [hashlib.sha1((x[i] * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()
                   for i in range(len(x))]
    seen[workers] = {"hashes": hashes, "batches": batches, "expected_batches": len(stream)}
with open(f"{out}/rank{state.process_index}.json", "w") as f:
    json.dump(seen, f)
