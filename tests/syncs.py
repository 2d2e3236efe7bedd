"""Count the operations that would make the CPU wait for a GPU, without a GPU.

`count_syncs(fn, *args, **kwargs)` runs fn(*args, **kwargs) with every tensor and module of args
and kwargs moved to a device without data, and returns a collections.Counter of the operations
that synchronise the host with a GPU, e.g. Counter({'aten.nonzero': 2, 'copy host->device': 1}):

- `aten.nonzero`, `aten.masked_select`, indexing with a boolean mask (`aten.index (bool)`,
  `aten.index_put (bool)`), `aten.repeat_interleave` without output_size, `aten.unique`,
  `aten.bincount`: the size of the output depends on the data, which the CPU must read;
- `aten._local_scalar_dense` (`.item()`, `float(t)`, `int(t)`, `.tolist()`, and `if t:`, whose
  aten.is_nonzero reaches the dispatcher as this op) and `aten.equal`: a value goes to Python;
- `copy host->device`: a constant built on the CPU and copied over (`torch.tensor([...]).to(
  x.device)`, `x.new_tensor([...])`, even `torch.tensor([...], device=x.device)`); `copy
  device->host` (`.cpu()`); a copy with non_blocking=True gets ' non_blocking' added to its name.
Not counted, because they make no copy: Python scalars in arithmetic (`x * 2.0`,
`torch.where(m, x, 0.0)`), `torch.full(..., device=)`, `torch.arange(..., device=)`.

fake_device picks the device:
- 'cuda' (default): PyTorch's FakeTensorMode with CUDA tensors (shapes, dtypes, devices, no data;
  no GPU needed), so code that branches on `device.type == 'cuda'` takes its GPU branch. Without a
  GPU, backward fails here ("hasPrimaryContext expects a valid device index"): PyTorch's autograd
  engine asks the CUDA driver about the device.
- 'meta': meta tensors (shapes only), on which backward runs. Use it for a whole training step on
  a machine without a GPU; a branch on `device.type == 'cuda'` then takes its non-CUDA side.
  PyTorch builds `torch.tensor(data, device='meta')` without a copy, so while fn runs,
  torch.tensor, torch.as_tensor and Tensor.new_tensor are wrapped to count a host->device copy
  whenever they build a tensor off the CPU from Python or NumPy data, and torch.autocast, which
  knows no 'meta' device, takes the CPU's for it.

Every tensor in args / kwargs (top level, or in a list, tuple or dict) becomes a tensor on that
device with the same shape, dtype and requires_grad; every nn.Module becomes a copy with its
parameters and buffers there (the caller's module is left alone). A torch.Generator is passed as
it is: random ops on fake or meta tensors ignore its device, and no CUDA generator can be made
without a GPU. Tensors that fn reaches some other way (a closure, a global) stay on the CPU: moving
one to fake_device counts as a copy, as it would on a GPU.

A training step, with the optimizer built inside fn from the copied module's parameters:

    def step(model, images, generator):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = data.two_views(images, generator=generator, **aug)
        loss = losses.simclr_loss(model(x), model(y), temperature=0.5)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counts = count_syncs(step, model, images, torch.Generator().manual_seed(0), fake_device='meta')
    assert not counts, counts

fn's return value is dropped: these tensors hold no numbers. Where fn reads a value (a counted
`.item()` or `if t:`) it gets a stand-in (1, 1.0 or True) and runs on; a data-dependent size (a
nonzero, a boolean mask) takes its largest value, as if every entry were True.
"""
import collections
import contextlib
import copy
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
DATA_DEPENDENT = {  # op -> its name in the Counter
    aten.nonzero.default: 'aten.nonzero',
    aten.masked_select.default: 'aten.masked_select',
    aten._local_scalar_dense.default: 'aten._local_scalar_dense',
    aten.equal.default: 'aten.equal',
    aten.repeat_interleave.Tensor: 'aten.repeat_interleave',
    aten.bincount.default: 'aten.bincount',
    aten._unique2.default: 'aten.unique',
    aten.unique_dim.default: 'aten.unique',
    aten.unique_consecutive.default: 'aten.unique',
}
INDEX_OPS = {aten.index.Tensor: 'aten.index (bool)',
             aten.index_put.default: 'aten.index_put (bool)',
             aten.index_put_.default: 'aten.index_put (bool)',
             aten._index_put_impl_.default: 'aten.index_put (bool)'}
COPY_OPS = (aten._to_copy.default, aten.copy_.default, aten.copy.default)


def _on_device(args, kwargs):
    flat = list(args) + list(kwargs.values())
    tensors = [t for a in flat for t in (a if isinstance(a, (list, tuple)) else [a])
               if isinstance(t, torch.Tensor)]
    return any(t.device.type != 'cpu' for t in tensors)


def _is_mask(index):
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _all_true_indices(mask):
    """The long indices that mask selects if every entry is True: one (numel,) per dimension."""
    n, stride, out = mask.numel(), mask.numel(), []
    for size in mask.shape:
        stride //= size
        out.append(torch.arange(n, device=mask.device) // stride % size)  # (numel,)
    return out


def _stand_in(func, args, kwargs):
    """A result of the right type, and the largest size, for an op whose output needs data."""
    x = args[0]
    if func is aten.nonzero.default:
        return torch.empty(x.numel(), x.dim(), dtype=torch.long, device=x.device)
    if func is aten.masked_select.default:
        n = torch.broadcast_shapes(x.shape, args[1].shape).numel()
        return torch.empty(n, dtype=x.dtype, device=x.device)
    if func is aten._local_scalar_dense.default and x.dtype != torch.bool:
        return 1.0 if x.is_floating_point() else 1
    if func in (aten._local_scalar_dense.default, aten.equal.default):
        return True
    if func is aten._to_copy.default:  # device -> host
        return torch.zeros(x.shape, dtype=kwargs.get('dtype') or x.dtype)
    if func is aten.copy_.default:  # into a host tensor
        return x
    raise NotImplementedError(f'{func} synchronises (its output size depends on the data) and '
                              f'count_syncs cannot run past it')


class SyncCounter(TorchDispatchMode):
    """Counts in .counts the synchronising ops that reach it; run it above a FakeTensorMode
    (fake CUDA tensors) or on meta tensors."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_host = False  # a device -> host copy, which a meta tensor cannot make
        if func in COPY_OPS:
            src = args[0] if func is aten._to_copy.default else args[1]
            dst = torch.device(kwargs.get('device') or args[0].device)
            if (src.device.type == 'cpu') != (dst.type == 'cpu'):
                to_host = dst.type == 'cpu'
                way = 'device->host' if to_host else 'host->device'
                how = ' non_blocking' if kwargs.get('non_blocking') else ''
                self.counts[f'copy {way}{how}'] += 1
        elif func in INDEX_OPS and any(_is_mask(i) for i in args[1]):
            if args[0].device.type != 'cpu':
                self.counts[INDEX_OPS[func]] += 1
            indices = [j for i in args[1] for j in (_all_true_indices(i) if _is_mask(i) else [i])]
            args = (args[0], indices, *args[2:])  # run on as if every mask entry were True
        elif func in DATA_DEPENDENT and _on_device(args, kwargs):
            self.counts[DATA_DEPENDENT[func]] += 1
        try:
            return func(*args, **kwargs)
        except (RuntimeError, NotImplementedError):  # the op needs data these tensors lack
            if func not in DATA_DEPENDENT and not to_host:
                raise
            return _stand_in(func, args, kwargs)


def _counting_constructor(constructor, counts):
    """constructor (torch.tensor, torch.as_tensor, Tensor.new_tensor) that counts each tensor it
    builds off the CPU from host data."""
    def build(*args, **kwargs):
        out = constructor(*args, **kwargs)
        data = args[-1] if args else kwargs.get('data')  # new_tensor's args are (self, data)
        if out.device.type != 'cpu' and not isinstance(data, torch.Tensor):
            counts['copy host->device'] += 1
        return out
    return build


def to_fake_device(obj, device, fake_mode=None):
    """obj with its tensors replaced by data-less tensors of the same shape, dtype and
    requires_grad on device (inside fake_mode when given); nothing is copied or counted. An
    nn.Module is deep-copied first; lists, tuples and dicts are converted item by item."""
    if isinstance(obj, torch.nn.Module):
        module, memo = copy.deepcopy(obj), {}  # memo: a tensor shared by two modules stays shared
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for name, t in store.items():
                    if t is not None and id(t) not in memo:
                        memo[id(t)] = to_fake_device(t, device, fake_mode)
                    if t is not None:
                        store[name] = memo[id(t)]
        return module
    if isinstance(obj, torch.Tensor):
        with fake_mode or contextlib.nullcontext():
            fake = torch.empty_strided(obj.shape, obj.stride(), dtype=obj.dtype, device=device)
            if isinstance(obj, torch.nn.Parameter):
                return torch.nn.Parameter(fake, requires_grad=obj.requires_grad)
            return fake.requires_grad_(obj.requires_grad)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_fake_device(o, device, fake_mode) for o in obj)
    if isinstance(obj, dict):
        return {k: to_fake_device(v, device, fake_mode) for k, v in obj.items()}
    return obj


def count_syncs(fn, *args, fake_device='cuda', **kwargs):
    """Counter of the ops of fn(*args, **kwargs) that would synchronise the CPU with a GPU, with
    the tensors and modules of args and kwargs on fake_device, 'cuda' (fake) or 'meta' (see the
    module docstring)."""
    if fake_device not in ('cuda', 'meta'):
        raise ValueError(f"fake_device must be 'cuda' or 'meta', got {fake_device!r}")
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake_device == 'cuda' else None
    args, kwargs = to_fake_device((args, kwargs), fake_device, fake_mode)
    with contextlib.ExitStack() as stack:
        counter = SyncCounter()
        if fake_mode:
            stack.enter_context(fake_mode)
        else:
            for owner, name in ((torch, 'tensor'), (torch, 'as_tensor'),
                                (torch.Tensor, 'new_tensor')):
                wrapped = _counting_constructor(getattr(owner, name), counter.counts)
                stack.enter_context(mock.patch.object(owner, name, wrapped))
            autocast = torch.autocast  # no autocast for 'meta': run the CPU's (a no-op off it)
            stack.enter_context(mock.patch.object(torch, 'autocast', lambda device_type, *a, **k:
                                                  autocast('cpu' if device_type == 'meta'
                                                           else device_type, *a, **k)))
        stack.enter_context(counter)
        fn(*args, **kwargs)
    return counter.counts
