"""One scheduling round of continuous batching: a prompt chunk, then one token for every running request.

Each round the worker (``ChatEngine``) admits waiting requests into free slots, then calls
``Batch.round``:

1. requests whose stop signal is set, or that are past the server's time limit, leave now;
2. the oldest request still reading its prompt gets one prefill chunk of at most ``prefill_chunk``
   tokens, so a long prompt delays the others by one chunk per round, not by the whole prompt;
   when its prompt is read it samples its first token;
3. every request past its prompt advances by one token, all in one batched forward
   (``batching.decode_rows``).

Every request picks its token on the device (``ActiveRequest.pick``), and the picks of all rows,
with each row's finiteness flag, come back to the host in one read per step (``_pick``): the only
device-to-host transfer of a step, which a GPU would otherwise wait for several times per token.
Logits with inf or NaN (an FP16 overflow) are recomputed once with FP32 matmuls where the layers
allow it (``use_fp32_decode``).

A request that fails (its prefill raises, its logits are inf/NaN, or its row of a failed batch
fails again when retried alone) ends with an error and the others go on. A sticky GPU fault (illegal
address, launch failure) is not retried: after one, no CUDA call can succeed in this process, so
``round`` raises ``DeviceFaultError`` and the engine stops serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ChatbotError, DeviceFaultError, GenerationError
from ..model.cpu_decode import decode_step_of
from ..model.cpu_layers import use_fp32_decode
from ..model.device import is_sticky_cuda_fault
from .batching import decode_rows
from .jobs import Failed, Finished
from .kv_cache import crop_to
from .request import ActiveRequest

log = logging.getLogger(__name__)
CPU_PREFILL_CHUNK = 128  # about a second of prefill on a 2-core CPU: what a running stream may stall
GPU_PREFILL_CHUNK = 2048
# Exceptions a forward pass may raise on bad input or a device error; anything else is a bug and propagates.
STEP_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


def as_generation_error(exc: BaseException) -> ChatbotError:
    if isinstance(exc, ChatbotError):
        return exc
    return GenerationError(
        f"Generation failed: {exc}", fix="Try again; if it keeps failing, run `python -m chatbot doctor`."
    )


def device_fault(exc: BaseException) -> DeviceFaultError:
    """The error every request gets once the GPU has faulted (``exc``: the fault as CUDA reported it)."""
    if isinstance(exc, DeviceFaultError):
        return exc
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return DeviceFaultError(
        f"The GPU faulted while generating ({first}). CUDA cannot be used again in this process, so this "
        "server has stopped generating.",
        fix="Restart the server. If it happens again, restart with --precision bf16 (no FP8 kernels) or "
        "--device cpu, and run `python -m chatbot doctor --load` to see each FP8 kernel's self-check.",
    )


OVERFLOW = GenerationError(
    "The model produced inf/NaN (an overflow in this precision).",
    fix="Restart with --precision bf16 or --precision fp32.",
)


class Batch:
    """The running requests of one engine (driven by its worker thread, one ``round`` at a time)."""

    def __init__(
        self, model: Any, device: torch.device, prefill_chunk: int, on_end: Callable[[ActiveRequest], None]
    ) -> None:
        self.model = model
        self.device = device
        self.prefill_chunk = prefill_chunk
        self.requests: list[ActiveRequest] = []
        self._on_end = on_end

    def __len__(self) -> int:
        return len(self.requests)

    def add(self, request: ActiveRequest) -> None:
        self.requests.append(request)

    def remove(self, request: ActiveRequest) -> None:
        self.requests.remove(request)

    @torch.inference_mode()
    def round(self) -> None:
        for request in list(self.requests):
            if request.check_cancel() or request.check_time():
                self._end(request)
        self._share_prompts()
        prefilling = [r for r in self.requests if r.prefilling]
        if prefilling:
            self._prefill(prefilling[0])
            self._share_prompts()  # the other choices of a prompt just read start in this same round
        decoding = [r for r in self.requests if not r.prefilling and r.generated and r.finish is None]
        if decoding:
            self._decode(decoding)
        for request in [r for r in self.requests if r.finish is not None]:
            self._end(request)

    def _forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """One forward of ``ids`` on one request's cache; the last position's logits [1, vocab]."""
        step = decode_step_of(self.model, 1) if len(ids) == 1 else None
        if step is not None:
            return step(ids, [cache])
        chunk = torch.tensor([ids], device=self.device)
        return self.model(input_ids=chunk, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def _prefill(self, request: ActiveRequest) -> None:
        before = request.cache.get_seq_length()
        chunk = request.next_chunk(self.prefill_chunk)

        def forward() -> torch.Tensor:
            crop_to(request.cache, before)
            return self._forward(chunk, request.cache)

        try:
            logits = self._forward(chunk, request.cache)
            if not request.prefilling:  # the prompt is read: its last logits give the first token
                used = self._pick([request], logits, forward)
                if request.job.shared is not None and request.generated and request.finish is None:
                    request.job.shared.publish(request, used)
        except (*STEP_ERRORS, ChatbotError) as exc:
            self._fail(request, exc)

    def _share_prompts(self) -> None:
        """Choices whose prompt another choice of their request has read take a copy of its cache and pick
        their first token from its last logits, with no prefill of their own (``shared_prefill``)."""
        ready = [r for r in self.requests if r.job.shared is not None and r.job.shared.serves(r)]
        adopted, logits = [], []
        for request in ready:
            shared = request.job.shared
            assert shared is not None and shared.logits is not None
            try:
                cache = shared.copy_cache(request.config)
            except STEP_ERRORS as exc:  # e.g. out of memory for the copy
                self._fail(request, exc)
                continue
            if cache is None:  # layers that cannot be copied: this choice reads the prompt itself
                continue
            request.adopt(cache)
            adopted.append(request)
            logits.append(shared.logits)
        if adopted:
            rows = torch.cat(logits)
            self._pick(adopted, rows, lambda: rows)  # the logits passed the publisher's finiteness check

    def _decode(self, requests: list[ActiveRequest]) -> None:
        lengths = [r.cache.get_seq_length() for r in requests]

        def forward() -> torch.Tensor:
            for request, length in zip(requests, lengths, strict=True):
                crop_to(request.cache, length)
            return decode_rows(self.model, [r.last_token for r in requests], [r.cache for r in requests], self.device)

        try:
            logits = decode_rows(self.model, [r.last_token for r in requests], [r.cache for r in requests], self.device)
            picks = self._picks(requests, logits)
        except STEP_ERRORS as exc:
            if is_sticky_cuda_fault(exc):  # retrying row by row would only fault again, once per row
                raise device_fault(exc) from exc
            if len(requests) == 1:
                self._fail(requests[0], exc)
                return
            # Which row broke the batch is unknown: every row tries again alone, and only a failing one ends.
            log.warning("A batched decode step failed (%s); retrying its %d requests one by one", exc, len(requests))
            for request, length in zip(requests, lengths, strict=True):
                crop_to(request.cache, length)
                self._decode([request])
            return
        self._pick(requests, logits, forward, picks)

    def _picks(self, requests: list[ActiveRequest], logits: torch.Tensor) -> list[list[float]]:
        """Every row's pick (token, finite flag, logprobs), read from the device in one transfer."""
        tensors = [request.pick(logits[row]) for row, request in enumerate(requests)]
        values = torch.cat(tensors).tolist()  # the one device-to-host read of the step
        picks, start = [], 0
        for tensor in tensors:
            picks.append(values[start : start + tensor.numel()])
            start += tensor.numel()
        return picks

    def _pick(
        self,
        requests: list[ActiveRequest],
        logits: torch.Tensor,
        recompute: Callable[[], torch.Tensor],
        picks: list[list[float]] | None = None,
    ) -> torch.Tensor:
        """Give every request its picked token; logits with inf/NaN are recomputed once in FP32 where the
        layers allow it (an FP16 overflow), else that request fails. Returns the logits picked from."""
        picks = picks if picks is not None else self._picks(requests, logits)
        if not all(pick[1] for pick in picks) and use_fp32_decode(self.model):
            log.warning("FP16 overflow in a decode matmul: CPU layers decode in FP32 from now on")
            # The picks were not committed: each sampler picks again (its random stream moves on).
            logits = recompute()
            picks = self._picks(requests, logits)
        for request, pick in zip(requests, picks, strict=True):
            if not pick[1]:
                self._fail(request, OVERFLOW)
                continue
            try:
                request.accept(pick)
            except (*STEP_ERRORS, ChatbotError) as exc:  # e.g. in the request's grammar
                self._fail(request, exc)
        return logits

    def _fail(self, request: ActiveRequest, exc: BaseException) -> None:
        if is_sticky_cuda_fault(exc):
            raise device_fault(exc) from exc
        if not isinstance(exc, ChatbotError):
            log.error("Generation of request %d failed: %s", request.job.id, exc, exc_info=exc)
        self.requests.remove(request)
        if request.job.shared is not None:
            request.job.shared.drop(request)
        request.job.events.put(Failed(as_generation_error(exc)))
        self._on_end(request)

    def _end(self, request: ActiveRequest) -> None:
        self.requests.remove(request)
        result = request.result()
        if request.timed_out:
            log.warning(
                "request %d stopped at the time limit: %.0f s, %d new tokens (--max-generation-seconds)",
                request.job.id,
                result.stats.total_seconds,
                result.stats.new_tokens,
            )
        elif result.finish_reason == "cancelled":
            log.info(
                "request %d cancelled after %d of at most %d new tokens",
                request.job.id,
                result.stats.new_tokens,
                request.job.options.max_new_tokens,
            )
        request.job.events.put(Finished(result))
        self._on_end(request)
