"""Rules for operations that move, join or cut the channel dim: permute, reshape, concat,
stack, slice/split/select, and in-place slice writes."""

from __future__ import annotations

from ._mapping import Drop, Expand, Mapping, Permute, Spread, Window
from ._opbase import Conflict, Dims, Op, OpFacts, Resize, Rule, Shape
from ._tracing import signed_dim


class Permutation(Rule):
    """``permute``/``transpose``: channels move to another dim; their indices only change when a
    shuffle's two channel dims swap (``view(b, g, c // g, h, w).transpose(1, 2)``)."""

    def _perm(self, op: Op, nd: int) -> tuple[int, ...] | None:
        if op.base == "Permute":
            return op.dims_of("dims", nd)
        if op.base == "T":
            return (1, 0) if nd == 2 else None
        a, b = op.dim("dim0", nd), op.dim("dim1", nd)
        if a is None or b is None:
            return None
        perm = list(range(nd))
        perm[a], perm[b] = b, a
        return tuple(perm)

    def forward(self, op: Op) -> Dims | None:
        if op.in_dims[0] is None:
            return None
        perm = self._perm(op, len(op.out))
        return None if perm is None else tuple(sorted(perm.index(d) for d in op.in_dims[0]))

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        perm = self._perm(op, len(op.out))
        return None if perm is None else tuple(sorted(perm[d] for d in dims))

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        if self._perm(op, len(op.out)) is None:
            return OpFacts(op.label, problem=f"{op.label} moves dims in a way slimkit cannot read")
        return OpFacts(op.label)

    def in_map(self, op: Op, dims: Dims, slot: int) -> Mapping | None:
        perm = self._perm(op, len(op.out))
        if perm is None or len(dims) < 2:
            return None
        old = sorted(perm[d] for d in dims)  # channel dims of the input, in tensor order
        order = tuple(old.index(perm[d]) for d in dims)
        if order == tuple(range(len(dims))):
            return None
        shape = op.ins[0] or ()
        return Permute(tuple(shape[d] for d in old), order)


class Reshape(Rule):
    """``view``/``reshape``/``flatten``/``squeeze``: dims are matched by sizes and products."""

    def _blocks(self, src: Shape, dst: Shape) -> list[tuple[list[int], list[int]]] | None:
        """Runs of non-1 dims of ``src`` and ``dst`` with equal products, in order."""
        a = [i for i, s in enumerate(src) if s != 1]
        b = [i for i, s in enumerate(dst) if s != 1]
        blocks, i, j = [], 0, 0
        while i < len(a) and j < len(b):
            run_a, run_b = [a[i]], [b[j]]
            pa, pb = src[a[i]], dst[b[j]]
            i, j = i + 1, j + 1
            while pa != pb:
                if pa < pb and i < len(a):
                    pa *= src[a[i]]
                    run_a.append(a[i])
                    i += 1
                elif pb < pa and j < len(b):
                    pb *= dst[b[j]]
                    run_b.append(b[j])
                    j += 1
                else:
                    return None
            blocks.append((run_a, run_b))
        return blocks if i == len(a) and j == len(b) else None

    def _match(self, src: Shape, dst: Shape, dims: Dims) -> tuple[Dims, str] | None:
        """Output dims and how: "keep", "split" (into several dims) or "merge" (flatten)."""
        if any(src[d] == 1 for d in dims):
            return None
        for run_a, run_b in self._blocks(src, dst) or ():
            if not set(dims) & set(run_a):
                continue
            if len(dims) == 1 and run_a == list(dims):
                return tuple(run_b), "keep" if len(run_b) == 1 else "split"
            if len(run_b) == 1 and len(dims) == 1:
                return (run_b[0],), "merge"
            if list(dims) == run_a and len(run_b) == 1:
                return (run_b[0],), "keep"
            if list(dims) == run_a and [dst[d] for d in run_b] == [src[d] for d in run_a]:
                return tuple(run_b), "keep"
            return None
        return None

    def forward(self, op: Op) -> Dims | None:
        if op.in_dims[0] is None or op.ins[0] is None:
            return None
        found = self._match(op.ins[0], op.out, op.in_dims[0])
        return None if found is None else found[0]

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        src = op.ins[slot]
        if src is None:
            return None
        found = self._match(op.out, src, dims)
        return None if found is None or found[1] == "merge" else found[0]

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        src, in_dims = op.ins[0], op.in_dims[0]
        found = None if src is None or in_dims is None else self._match(src, op.out, in_dims)
        if found is None:
            return OpFacts(
                op.label,
                problem=f"{op.label} reshapes {src} -> {op.out}, mixing "
                "channels with other dimensions",
            )
        if found[1] == "split":
            outer = op.out[found[0][0]]
            return OpFacts(op.label, tie=(src[in_dims[0]] // outer, outer))  # type: ignore[index]
        return OpFacts(op.label)

    def in_map(self, op: Op, dims: Dims, slot: int) -> Mapping | None:
        src, in_dims = op.ins[0], op.in_dims[0]
        if src is None or in_dims is None:
            return None
        found = self._match(src, op.out, in_dims)
        if found is None or found[1] != "merge":
            return None
        for run_a, run_b in self._blocks(src, op.out) or ():
            if run_b == list(found[0]):
                return Expand(tuple(src[d] for d in run_a), run_a.index(in_dims[0]))
        return None


def _offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


class Concat(Rule):
    """``torch.cat``: along the channels, each input lands at its offset."""

    def forward(self, op: Op) -> Dims | None:
        found = {d for d in op.in_dims if d is not None}
        if len(found) > 1:
            raise Conflict(f"{op.label} joins tensors with channels on dims {sorted(found)}")
        return found.pop() if found else None

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        return dims

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        cat = op.dim("dim", len(op.out))
        if cat in dims and len(dims) > 1:
            return OpFacts(op.label, problem=f"{op.label} joins shuffled channels")
        if cat in dims and any(s is None for s in op.ins):
            return OpFacts(op.label, problem=f"{op.label} joins channels of unknown sizes")
        return OpFacts(op.label)

    def in_map(self, op: Op, dims: Dims, slot: int) -> Mapping | None:
        cat = op.dim("dim", len(op.out))
        if cat not in dims or any(s is None for s in op.ins):
            return None
        offsets = _offsets([s[cat] for s in op.ins])  # type: ignore[index]
        return Spread(offsets[slot], offsets[slot + 1])


class Stack(Rule):
    """``torch.stack``: a new dim is inserted; channels keep their indices."""

    def forward(self, op: Op) -> Dims | None:
        found = {d for d in op.in_dims if d is not None}
        if len(found) != 1:
            return None
        at = op.dim("dim", len(op.out))
        return tuple(d + (at is not None and d >= at) for d in found.pop())

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        at = op.dim("dim", len(op.out))
        if at is None or at in dims:
            return None
        return tuple(d - (d > at) for d in dims)

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        return OpFacts(op.label)


class Narrow(Rule):
    """slice / select / split / chunk / unbind / as_strided views: coordinates of the input."""

    narrowing = True
    input_dims = True

    def _window(self, op: Op, nr: int, size: int) -> tuple[int, int, int] | None:
        """The (start, stop, step) of input channels output ``nr`` reads, or None if all."""
        base, nd = op.base, len(op.ins[0] or op.out)
        if base == "Slice":
            if op.dim("dim", nd) is None:
                return None
            start, end, step = op.saved("start"), op.saved("end"), op.saved("step")
            start = signed_dim(start, size) if isinstance(start, int) else 0
            end = min(signed_dim(end, size) if isinstance(end, int) else size, size)
            return max(0, start), max(end, 0), step or 1
        if base == "Select":
            index = signed_dim(op.saved("index"), size)
            return index, index + 1, 1
        if base in ("Split", "SplitWithSizes"):
            offsets = _offsets(self._sizes(op, size))
            return offsets[nr], offsets[nr + 1], 1
        if base == "Unbind":
            return nr, nr + 1, 1
        region = op.call.region if op.call is not None else None
        return None if region is None else region[self._dim(op) or 0]

    def _dim(self, op: Op) -> int | None:
        nd = len(op.ins[0] or op.out)
        if op.base == "AsStrided":
            region = op.call.region if op.call is not None else None
            if region is None:
                return None
            partial = [
                d
                for d, (a, b, s) in enumerate(region)
                if (a, b, s) != (0, (op.ins[0] or op.out)[d], 1)
            ]
            return partial[0] if len(partial) == 1 else (None if partial else -1)
        return op.dim("dim", nd)

    def _sizes(self, op: Op, size: int) -> list[int]:
        sizes = op.saved("split_sizes")
        if sizes is not None:
            return list(sizes)
        step = op.saved("split_size") or size
        return [min(step, size - start) for start in range(0, size, step)]

    def _drops_dim(self, op: Op) -> bool:
        return op.base in ("Select", "Unbind")

    def forward(self, op: Op) -> Dims | None:
        dims, at = op.in_dims[0], self._dim(op)
        if dims is None or (self._drops_dim(op) and at in dims):
            return None
        if self._drops_dim(op) and at is not None:
            return tuple(d - (d > at) for d in dims)
        return dims

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        at = self._dim(op)
        if self._drops_dim(op):
            return None if at is None else tuple(d + (d >= at) for d in dims)
        return dims

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        at, shape = self._dim(op), op.ins[0]
        if at == -1:  # an as_strided view of everything
            return OpFacts(op.label)
        if at is None or shape is None:
            return OpFacts(op.label, problem=f"{op.label} takes a view slimkit cannot read")
        if at not in dims:
            return OpFacts(op.label)
        if len(dims) > 1:
            return OpFacts(op.label, problem=f"{op.label} cuts shuffled channels")
        return self._channel_facts(op, shape[at])

    def _channel_facts(self, op: Op, size: int) -> OpFacts:
        facts = OpFacts(op.label)
        if op.base == "Unbind":
            facts.problem = f"{op.label} unbinds a tensor along its channels"
        elif op.base in ("Split", "SplitWithSizes"):
            sizes = self._sizes(op, size)
            func = op.call.func if op.call is not None else ""
            resize = _resize(op, sizes)
            if func == "chunk" and len(set(sizes)) == 1:
                facts.tie = (sizes[0], len(sizes)) if len(sizes) > 1 else None
            elif resize is not None and resize.kind in ("int", "total"):
                facts.tie, facts.resize = (sizes[0], len(sizes)), resize
            elif resize is not None:  # each part keeps a channel: its conv must not vanish
                facts.resize, facts.keep = resize, tuple(_offsets(sizes)[:-1])
            else:
                facts.pin = size  # the code passes fixed sizes: every channel must stay
                facts.label = f"{op.label} (split into fixed sizes {sizes})"
        else:
            start, stop, step = self._window(op, 0, size) or (0, size, 1)
            bounded(facts, op, (start, stop, step), size, op.base == "Select")
        return facts

    def out_map(self, op: Op, dims: Dims, nr: int) -> Mapping | None:
        at, shape = self._dim(op), op.ins[0]
        if at is None or at == -1 or shape is None or at not in dims:
            return None
        window = self._window(op, nr, shape[at])
        if window is None:
            return None
        if self._drops_dim(op):
            return Drop()
        return Window(*window)


def _resize(op: Op, sizes: list[int]) -> Resize | None:
    """The attributes of the calling module that hold the split sizes (MixNet's ``self.splits``,
    Res2Net's ``self.width``, YOLOv8's ``(self.c, self.c)``, CSPNet's ``self.expand_chs // 2``),
    so that the pruned model splits at the new sizes. A wrong guess fails the self-check."""
    owner = op.call.owner if op.call is not None else None
    if owner is None:
        return None
    attrs = {k: v for k, v in vars(owner).items() if not k.startswith("_")}
    ints = {k: v for k, v in attrs.items() if type(v) is int}
    for name, value in attrs.items():
        if isinstance(value, list | tuple) and list(value) == sizes:
            return Resize(owner, (name,), "list", tuple(sizes))
    if len(set(sizes)) == 1 and len(sizes) > 1:  # equal parts: one attribute holds a part/all
        for kind, value in (("int", sizes[0]), ("total", sum(sizes))):
            names = [k for k, v in ints.items() if v == value]
            if len(names) == 1:
                return Resize(owner, (names[0],), kind, tuple(sizes))
        return None
    names = []
    for size in sizes:
        match = [k for k, v in ints.items() if v == size and k not in names]
        if len(match) != 1 or sizes.count(size) > 1:
            return None
        names.append(match[0])
    return Resize(owner, tuple(names), "ints", tuple(sizes))


def bounded(facts: OpFacts, op: Op, window: tuple[int, int, int], size: int, select: bool) -> None:
    """Channels read through ``x[:, start:stop]``: bounds held in attributes of the calling
    module (ReXNet's ``self.in_channels``, DPN's ``self.num_1x1_c``, GhostNet's ``self.out_chs``)
    follow the pruning; literal bounds fix the channels before them."""
    start, stop, step = window
    open_end = stop >= size and step == 1 and not select
    owner = op.call.owner if op.call is not None else None
    if owner is not None and step == 1 and not select:
        ints = {k: v for k, v in vars(owner).items() if type(v) is int and not k.startswith("_")}
        names = []
        for bound, needed in ((start, start > 0), (stop, not open_end)):
            match = [k for k, v in ints.items() if v == bound] if needed else [""]
            names.append(match[0] if len(match) == 1 else None)
        if None not in names:
            facts.resize = Resize(
                owner, tuple(n or "" for n in names), "bounds", (start, stop, size)
            )
            facts.keep = (start,)  # the slice never becomes empty
            return
    facts.pin = start if open_end else stop
    facts.label = f"{op.label} (fixed channel bounds {start}:{stop})"


class CopySlices(Rule):
    """``out[:, a:b] = y`` / ``out[:, a:b] += y``: ``y``'s channels land at ``a``."""

    def _region(self, op: Op) -> tuple[tuple[int, int, int], ...] | None:
        return op.call.region if op.call is not None else None

    def forward(self, op: Op) -> Dims | None:
        known = [d for d in op.in_dims if d is not None]
        return known[0] if known else None

    def backward(self, op: Op, dims: Dims, slot: int) -> Dims | None:
        return dims

    def facts(self, op: Op, dims: Dims) -> OpFacts:
        region = self._region(op)
        if region is None or len(region) != len(op.out) or len(dims) > 1:
            return OpFacts(op.label, problem=f"{op.label} writes into a region slimkit cannot read")
        start, stop, step = region[dims[0]]
        size = op.out[dims[0]]
        facts = OpFacts(op.label)
        if (start, stop, step) != (0, size, 1):
            bounded(facts, op, (start, stop, step), size, False)
        return facts

    def in_map(self, op: Op, dims: Dims, slot: int) -> Mapping | None:
        region = self._region(op)
        if slot == 0 or region is None or len(dims) != 1:
            return None
        shape = op.ins[slot]
        if (
            shape is not None
            and len(shape) == len(op.out)
            and shape[dims[0]] == 1 < op.out[dims[0]]
        ):
            return Drop()
        start, stop, step = region[dims[0]]
        return Spread(start, stop, step)
