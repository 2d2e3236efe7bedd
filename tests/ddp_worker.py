"""Run by tests/test_distributed.py, alone or under torchrun: the parameter gradients of the
third of three SGD steps of train.contrastive_step on a fixed global batch (float64), saved by
rank 0 to argv[1]. The network has no BatchNorm (train.py syncs BatchNorm on GPUs only), so one
process and two compute the same gradients exactly when the gather is right."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import losses  # noqa: E402
import train  # noqa: E402


class SmallNet(torch.nn.Module):
    """(B, 3, 32, 32) -> h (B, 8), z (B, 16): a conv, ReLU, average pool and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.Linear(8, 16)

    def forward(self, x):
        h = self.conv(x).relu().mean((2, 3))
        return h, self.head(h)


world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    dist.init_process_group("gloo")
images, _ = data.make_shapes(16, seed=0)  # the global batch, m = 16
x, y = data.two_views(images, generator=torch.Generator().manual_seed(0),
                      **data.augment_kwargs("shapes"))
x, y = x.double(), y.double()
torch.set_default_dtype(torch.float64)  # so that only real differences exceed 1e-10
torch.manual_seed(0)
model = SmallNet()
net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
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
assert seen == [(16, 16)] * 3, seen  # the loss saw the global batch
if rank == 0:
    torch.save({name: p.grad for name, p in model.named_parameters()}, sys.argv[1])
if world > 1:  # DDP goes before its process group; then all leave together
    del net
    dist.barrier()
    dist.destroy_process_group()
