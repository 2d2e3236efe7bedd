"""Run by tests/test_distributed.py, alone or under torchrun: the parameter gradients of the
third of three SGD steps of train.contrastive_step on a fixed global batch (float64), saved by
rank 0 to argv[1]."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import losses  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402

world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    dist.init_process_group("gloo")
images, _ = data.make_shapes(16, seed=0)  # the global batch, m = 16
aug = dict(data.AUGMENT_PRESETS["shapes"], **data.DATASET_STATS["shapes"])
x, y = data.two_views(images, generator=torch.Generator().manual_seed(0), **aug)
x, y = x.double(), y.double()
torch.set_default_dtype(torch.float64)  # so that only real differences exceed 1e-5
torch.manual_seed(0)
model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
model = model.to(memory_format=models.memory_format(model, torch.device("cpu")))  # train.py's
net = model
if world > 1:
    net = torch.nn.parallel.DistributedDataParallel(train.global_batchnorm(model))
lo, hi = rank * 16 // world, (rank + 1) * 16 // world
loss_fn = train.make_loss("simclr", temperature=0.2, siglip_t=10.0, siglip_b=10.0,
                          within_view=False)
seen = []  # the batch size m that the loss sees


def recording_loss(u, v):
    seen.append(u.shape)
    return loss_fn(u, v)


opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for step in range(3):
    train.contrastive_step(net, opt, x[lo:hi], y[lo:hi], loss_fn=recording_loss,
                           vrns_fn=losses.vrns_loss, n=100, lam=30.0,
                           gather=train.GatherWithGrad.apply if world > 1 else None)
assert seen == [(16, 128)] * 3, seen  # the loss saw the global batch
if rank == 0:
    torch.save({name: p.grad for name, p in model.named_parameters()}, sys.argv[1])
if world > 1:
    dist.barrier()  # leave together: gloo aborts a process that tears down mid-conversation
    dist.destroy_process_group()
