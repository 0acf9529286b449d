"""Run by test_distributed.py under `accelerate launch --multi_gpu --num_processes 2`: a few FCL steps of the LeNet
on different data per rank, with the backward train_fcl.py takes (into the parameters only) and the FCLConfig fields
given as JSON in argv[3]; rank 0 writes every rank's parameter vector to the JSON file named by argv[1]."""
import json
import sys

import timm
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

import timm_fcl


def main(out_path: str, mixed_precision: str, config: dict) -> None:
    # with no accelerator, `accelerate launch --multi_gpu` processes join as MULTI_CPU (gloo) only when cpu=True
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.accelerator.is_available())
    set_seed(0)
    model = timm.create_model("lenet_mnist", num_classes=10)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    reg = timm_fcl.FeatureContrastiveRegularizer(model, timm_fcl.FCLConfig(k=64, weight=0.5, tau=0.5, **config))
    opt = torch.optim.SGD(reg.parameters(), lr=0.05, momentum=0.9)
    reg, opt = accelerator.prepare(reg, opt)
    trainable = [p for p in reg.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(100 + accelerator.process_index)  # different data on each rank
    losses = []
    for step in range(4):
        x = torch.rand(8, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        with accelerator.autocast():
            out = reg(x, y, step=step)
        accelerator.backward(out.loss, inputs=trainable)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    params = torch.cat([p.detach().flatten() for p in accelerator.unwrap_model(reg).model.parameters()])
    gathered = accelerator.gather(params[None])
    if accelerator.is_main_process:
        with open(out_path, "w") as f:
            json.dump({"num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
                       "params": gathered.tolist(), "moved": (params - initial).abs().max().item(),
                       "losses": losses}, f)
    # tear the process group down before exit, as train_fcl.py does: a gloo group left to the interpreter's shutdown
    # is our best guess for a rank that aborted ("terminate called without an active exception") on a loaded machine
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "no",
         json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
