"""Replaying policies over real text: which next tokens, and how much of the target's distribution,
each policy's active set held when they came.

Each policy replays each stream teacher-forced: after a ``prompt_tokens`` context it observes the
true tokens ``REPLAY_STEP`` at a time, as if each draft step accepted that many, and before each
chunk its active set is compared with
- the true next tokens (*text coverage*), and
- the target's own sampling distribution there, at each temperature (*target mass*: the share of
  the target's probability inside the set; at T=0 whether its argmax is inside). A drafter that can
  only propose tokens of the set is accepted per token with probability at most this mass, so it
  bounds what any restricted policy can reach, and it shows when a target spreads its mass over
  tokens no K-row set holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from evospec.data.teacher_forced import teacher_forced
from evospec.runtime.sampling import sampling_probs

REPLAY_STEP = 3  # tokens observed per replayed step


def decoding_state(states: torch.Tensor | None, pos: int) -> torch.Tensor | None:
    """The drafter state decoding hands a policy when the tokens from ``pos`` on are committed: the
    head input of the cycle's root call at the newest token before them (``states[j]`` predicts token
    j + 2, so the root's state is ``states[pos - 2]``)."""
    return states[pos - 2] if states is not None and pos >= 2 else None


@dataclass
class ReplayCounts:
    hits: int = 0
    total: int = 0
    mass: dict[float, float] = field(default_factory=dict)  # temperature -> summed target mass in the set

    @property
    def text_coverage(self) -> float:
        return self.hits / max(self.total, 1)

    def target_mass(self, temperature: float) -> float | None:
        return self.mass[temperature] / self.total if temperature in self.mass and self.total else None


def replay_stream(policy, ids: list[int], vocab_size: int, prompt_tokens: int, counts: ReplayCounts,
                  states: torch.Tensor | None = None, probs: dict[float, torch.Tensor] | None = None,
                  top: torch.Tensor | None = None) -> None:
    """Replay one stream into ``counts``; ``probs[T][i]``: the target's distribution for token i + 1;
    ``top[i]``: the target's most likely ids there, handed to a policy that asks for verification
    feedback (``target_top``) as decoding hands it the verified rows."""
    member = torch.zeros(vocab_size, dtype=torch.bool)
    routed = hasattr(policy, "route")
    policy.reset(ids[:prompt_tokens])
    previous = None
    for pos in range(prompt_tokens, len(ids), REPLAY_STEP):
        state = decoding_state(states, pos)
        active = policy.route(state) if routed and state is not None else policy.active_ids()
        if active is not previous:  # static policies hand back the same tensor: no rebuild
            member.zero_()
            member[active] = True
            previous = active
        chunk = ids[pos : pos + REPLAY_STEP]
        counts.hits += int(member[torch.tensor(chunk)].sum())
        counts.total += len(chunk)
        for temperature, p in (probs or {}).items():
            rows = p[pos - 1 : pos - 1 + len(chunk)]
            counts.mass[temperature] = counts.mass.get(temperature, 0.0) + float(rows[:, member].sum())
        feedback = getattr(policy, "target_top", 0)
        if feedback and top is not None:
            policy.observe(chunk, state, top[pos - 1 : pos - 1 + len(chunk), :feedback])
        else:
            policy.observe(chunk, state)


def text_coverage(policy, streams: list[list[int]], vocab_size: int, prompt_tokens: int,
                  states: list | None = None) -> float:
    """Share of the true next tokens of ``streams`` (after a ``prompt_tokens`` context) that the
    policy's active set held when they came. ``states[i][j]``: the drafter's head input at position j
    of stream i; a routing policy is routed with, and every policy observes, the state decoding would
    give it at that point (``decoding_state``)."""
    counts = ReplayCounts()
    for i, ids in enumerate(streams):
        replay_stream(policy, ids, vocab_size, prompt_tokens, counts, states[i] if states is not None else None)
    return counts.text_coverage


@torch.no_grad()
def target_distributions(generator, ids: list[int], temperatures: list[float], top_p: float,
                         top: int = 0) -> tuple[dict[float, torch.Tensor], torch.Tensor | None]:
    """[len(ids) - 1, V] per temperature: the target's sampling distribution for each next token
    (temperature 0: its argmax as a point mass), teacher-forced over ``ids``; and with ``top`` > 0
    its ``top`` most likely ids there ([len(ids) - 1, top], else None)."""
    target = generator.target
    n = len(ids) - 1
    logits = target.forward(torch.tensor([ids[:n]], device=target.device), torch.arange(n, device=target.device)[None],
                            target.new_cache()).logits.float().cpu()
    out = {}
    for t in temperatures:
        if t > 0:
            out[t] = sampling_probs(logits, t, top_p).float()
        else:
            out[t] = torch.zeros_like(logits).scatter_(1, logits.argmax(-1, keepdim=True), 1.0)
    return out, (logits.topk(min(top, logits.shape[-1]), dim=-1).indices if top else None)


def replay_policies(generator, policies: dict, streams: list[list[int]], vocab_size: int, prompt_tokens: int,
                    states: list | None, temperatures: list[float], top_p: float) -> dict[str, ReplayCounts]:
    """Every policy over every stream, stream by stream (one stream's target distributions in memory at a time)."""
    counts = {spec: ReplayCounts() for spec in policies}
    feedback = max((getattr(policy, "target_top", 0) for policy in policies.values()), default=0)
    for i, ids in enumerate(streams):
        probs, top = target_distributions(generator, ids, temperatures, top_p, feedback)
        for spec, policy in policies.items():
            replay_stream(policy, ids, vocab_size, prompt_tokens, counts[spec],
                          states[i] if states is not None else None, probs, top)
        del probs
    return counts


def replay_by_kind(generator, policies: dict, streams: list[list[int]], vocab_size: int, prompt_tokens: int,
                   states: list | None, temperatures: list[float], top_p: float) -> dict[bool, dict[str, ReplayCounts]]:
    """``replay_policies`` for greedy (T = 0) and for sampled requests, keyed by greediness. A policy whose set
    depends on the kind of request (``decoding``: EvoSpec's fill with a router) replays once as each kind, with
    that kind's temperatures; where no policy does, one replay serves both."""
    kinds = sorted({t == 0 for t in temperatures})
    if not any(hasattr(policy, "decoding") for policy in policies.values()):
        counts = replay_policies(generator, policies, streams, vocab_size, prompt_tokens, states, temperatures, top_p)
        return {greedy: counts for greedy in kinds}
    out = {}
    for greedy in kinds:
        for policy in policies.values():
            if hasattr(policy, "decoding"):
                policy.decoding(greedy)
        chosen = [t for t in temperatures if (t == 0) == greedy]
        out[greedy] = replay_policies(generator, policies, streams, vocab_size, prompt_tokens, states, chosen, top_p)
    return out


def replay_states(generator, streams: list[list[int]], needed: bool) -> list | None:
    """Per stream, the compiled drafter's head input at every position (teacher-forced), when some
    policy reads states (semantic retrieval, routing)."""
    return [teacher_forced(generator, ids)[0] for ids in streams] if needed else None
