"""Host -> device copies of small index tensors (active ids, changed columns) without host syncs.

Gather plans are computed on the host. On a GPU their ids go up through pinned staging buffers
on a side stream; the stream that consumes them waits on the copy's event, the host does not.
Each name has a small ring of staging buffers: a buffer is reused only after its previous copy
finished (its event), and with ``RING`` buffers that copy was enqueued ``RING`` uploads ago, so
the host practically never waits. A plan that changed in a few columns sends only those columns
(``patch``); the rest is a device-side copy. On CPU, ``upload`` and ``patch`` return their input.
"""

from __future__ import annotations

import torch

RING = 4  # staging buffers per name


def patched(current: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``current`` with ``current[cols] = values``; ``current`` itself is left alone, since
    trees and statistics of earlier steps may still hold it."""
    return current.clone().index_copy_(0, cols, values)


class DeviceUploader:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._staging: dict[str, list[tuple[torch.Tensor, torch.cuda.Event | None]]] = {}
        self._turn: dict[str, int] = {}
        self.bytes_sent = 0  # host -> device bytes so far (what ``patch`` saves shows here)

    def upload(self, name: str, host: torch.Tensor) -> torch.Tensor:
        """``host`` on the device, ordered before anything later enqueued on the current stream."""
        if not self.cuda:
            return host
        host = host.contiguous()
        ring = self._staging.setdefault(name, [])
        turn = self._turn.get(name, 0)
        self._turn[name] = (turn + 1) % RING
        buffer, done = ring[turn] if turn < len(ring) else (None, None)
        if buffer is None or buffer.numel() < host.numel() or buffer.dtype != host.dtype:
            buffer = torch.empty(max(host.numel(), 1), dtype=host.dtype).pin_memory()
        elif done is not None:
            done.synchronize()  # the copy out of this buffer, RING uploads ago, has finished
        staged = buffer[: host.numel()].view(host.shape)
        staged.copy_(host)
        consumer = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            out = torch.empty(host.shape, dtype=host.dtype, device=self.device)
            out.copy_(staged, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        consumer.wait_event(event)
        out.record_stream(consumer)  # allocated on the side stream, used on the consumer's
        entry = (buffer, event)
        if turn < len(ring):
            ring[turn] = entry
        else:
            ring.append(entry)
        self.bytes_sent += host.numel() * host.element_size()
        return out

    def patch(self, name: str, current: torch.Tensor | None, host: torch.Tensor,
              cols: torch.Tensor | None) -> torch.Tensor:
        """``host`` on the device, given ``current`` (the device copy of its previous version) and the
        host positions ``cols`` where the two differ: only those entries go up. Without ``current`` or
        ``cols``, or with a changed shape, the whole tensor goes up."""
        if not self.cuda:
            return host
        if current is None or cols is None or current.shape != host.shape:
            return self.upload(name, host)
        if cols.numel() == 0:
            return current
        return patched(current, self.upload(f"{name}.cols", cols), self.upload(f"{name}.values", host[cols]))
