"""Host -> device copies of small index tensors (active ids, changed columns) without host syncs.

Gather plans are computed on the host. On a GPU their ids go up through a pinned staging buffer
on a side stream; the stream that consumes them waits on the copy's event, the host does not.
A staging buffer is reused only after its previous copy finished (its event), so the host never
overwrites bytes still in flight. On CPU, ``upload`` returns its input.
"""

from __future__ import annotations

import torch


class DeviceUploader:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._staging: dict[str, tuple[torch.Tensor, torch.cuda.Event | None]] = {}

    def upload(self, name: str, host: torch.Tensor) -> torch.Tensor:
        """``host`` on the device, ordered before anything later enqueued on the current stream."""
        if not self.cuda:
            return host
        host = host.contiguous()
        buffer, done = self._staging.get(name, (None, None))
        if buffer is None or buffer.numel() < host.numel() or buffer.dtype != host.dtype:
            buffer = torch.empty(max(host.numel(), 1), dtype=host.dtype).pin_memory()
        elif done is not None:
            done.synchronize()  # the previous copy out of this buffer has finished (it is tiny)
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
        self._staging[name] = (buffer, event)
        return out
