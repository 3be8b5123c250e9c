"""The continuous-batching engine: one model thread, a fixed set of slots, a bounded queue.

    submit(sequences) -> a Ticket whose events arrive on the caller's callback, from the model thread

Each loop of the model thread: admit waiting sequences into free slots (their prompts prefilled into
their slots -- a burst of newcomers in one forward -- and their first tokens picked), then run one decode step over every running sequence
(slots.decode_slots: rows at different cache lengths), pick each row's next token with the row's own
options and random generator, and report it. A sequence leaves its slot the moment it ends (length,
end-of-text, stop string, cancel, deadline: its finish.Finisher, the rule `numgpt generate` uses too), and
the next waiting one takes the slot at the next loop. A loop first runs one waiting `call` if there is one
(a forward without decoding: a batch of /v1/embeddings), so that two forwards never share the cores.

Speculative decoding (Engine(speculative="ngram"|"draft"), `numgpt serve --speculative`): every sequence
drafts and verifies on its own, in its own slot -- its round's K+1-row forward runs through its slot's
view of the cache (SlotCache.view), which is then rolled back past the rejected drafts; the plain rows
still decode together. Exact as in `numgpt generate` (numgpt/speculative.py), simple, and fastest for
one request at a time; under load the batched step would read the weights once for all rows instead.
The statistics come with the Finished event (the usage's "speculative" in completions.py).

Determinism: a seeded sequence draws from its own generator, SeedSequence(seed, spawn_key=(j,)) for
sample j of a request (as `numgpt generate --seed`), and whenever a seeded sequence is running the decode
step runs batch-invariant (slots.py), so its text is byte-identical whatever else runs. Without a seed a
lone sequence takes the faster one-row path of `model.forward`, the same path as `numgpt generate`.

No HTTP here: completions.py turns requests into SequenceRequests and events into responses; the
tests drive this class directly too.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..errors import NumgptError
from ..finish import Finisher
from ..generate import DEFAULT_NUM_DRAFT, TokenLogprob, token_logprob_rows
from ..model import check_finite_logits
from ..panels import make_panels
from ..sampling import SamplingOptions, next_tokens
from ..slots import SlotCache, decode_slots, prefill_slot, prefill_slots, vocabulary_head
from ..speculative import Speculation, SpeculativeStats, speculation, verify_round


class QueueFull(NumgptError):
    """Every slot is busy and the waiting queue is full: the server answers 429."""


class ShuttingDown(NumgptError):
    """The engine is stopping (the server was told to quit): nothing new is taken (503)."""


class NeverFits(NumgptError):
    """More sequences in one submit than the slots and the queue hold together: waiting never helps (400)."""


@dataclass
class SequenceRequest:
    """One sequence to generate (a request with n = 3 is three of these).

    prompt_ids: the prompt, at least one token. max_new_tokens: 0 only scores the prompt.
    rng: this sequence's generator (None for greedy). seeded: run batch-invariant (see module docstring).
    logprobs: report each new token's ln p with this many alternatives (None: no log-probabilities).
    prompt_logprobs: report the prompt's log-probabilities with this many alternatives (None: don't).
    end_ids: tokens that end the sequence besides the end-of-text (a chat model's end of turn), like it
    not part of the text (the finish reason "eos", OpenAI's "stop").
    deadline: time.monotonic() after which the sequence ends with finish_reason "timeout".
    """

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingOptions
    rng: np.random.Generator | None = None
    seeded: bool = False
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    end_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    deadline: float | None = None


@dataclass
class Generated:
    """One generated token's event: its id, the text that became final with it ("" while a stop string
    might still match), and its log-probabilities when asked for."""

    token: int
    text: str
    logprob: TokenLogprob | None


def error_text(e: BaseException) -> str:
    """What a sequence that failed is told: a NumgptError's own line, else only the exception's type (its
    message may hold internals)."""
    return str(e) if isinstance(e, NumgptError) else f"internal error: {type(e).__name__}"


@dataclass
class Finished:
    """The last event of a sequence: why it ended, and the text released by the final flush."""

    reason: str          # one of finish.FINISH_REASONS ("eos", "stop", "length", ...); completions.py says it in OpenAI's words
    text: str = ""
    error: str | None = None
    speculative: SpeculativeStats | None = None   # what speculative decoding did, when the engine speculates


@dataclass
class Prefilled:
    """The first event: the prompt is in a slot (time to first token runs from here), with the prompt's
    log-probabilities when asked for (None for the first token)."""

    prompt_logprobs: list[TokenLogprob | None] | None


Event = Prefilled | Generated | Finished


@dataclass
class Ticket:
    """A submitted sequence: `cancel()` ends it at the next step (a disconnected client)."""

    request: SequenceRequest
    deliver: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False          # its Finished event was delivered (written by the model thread only)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Running:
    """A sequence in a slot: everything its next step needs."""

    ticket: Ticket
    slot: int
    tokens: list[int]                       # prompt + generated
    generated: list[int]
    finisher: Finisher                      # eos, stop strings, length, cancel, deadline (numgpt/finish.py)
    pending: int = -1                       # the token to feed at the next decode step
    spec: Speculation | None = None         # its drafter, when the engine speculates
    spec_stats: SpeculativeStats | None = None


@dataclass
class EngineStats:
    """Counts the metrics endpoint reads (plain ints, written only by the model thread)."""

    steps: int = 0
    prefills: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0


class Engine:
    """Continuous batching over `max_batch` slots of one model (see the module docstring).

    tokenizer: decodes tokens for the stop strings and the streamed text (the model's own).
    max_queue: sequences that may wait for a slot; beyond that submit raises QueueFull.
    """

    def __init__(self, params, config, tokenizer, *, max_batch: int = 8, max_queue: int = 64,
                 speculative: str | None = None, num_draft: int | None = None, draft: tuple | None = None):
        if max_batch < 1 or max_queue < 0:
            raise NumgptError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.speculative, self.num_draft, self.draft = speculative, num_draft or DEFAULT_NUM_DRAFT, draft
        if speculative is not None:       # checked now, not at the first request
            speculation(speculative, self.num_draft, config, draft=draft)
            if draft is not None and draft[1].n_positions < config.n_positions:
                raise NumgptError(f"the draft model's context ({draft[1].n_positions} positions) is shorter than "
                                  f"the model's ({config.n_positions}): requests the model can serve would fail; "
                                  "serve with a draft model of at least the model's context")
        self.params, self.config, self.tokenizer = params, config, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = SlotCache.allocate(config, max_batch)
        self.cache.touch()                # paid now, not by the first requests' first tokens
        if max_batch > 1 or speculative is not None:
            make_panels(params)           # the batched steps and verifications multiply through them
        self.head = vocabulary_head(params) if max_batch > 1 else None   # batched steps' logits (slots.py)
        self.stats = EngineStats()
        self._waiting: queue.Queue[Ticket] = queue.Queue()
        self._waiting_count = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._running: dict[int, Running] = {}   # slot -> sequence
        self._calls: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()   # see `call`
        self._entered = 0                         # of the group being admitted, how many are running
        self._thread: threading.Thread | None = None

    # ---- the caller's side --------------------------------------------------------------------------

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="numgpt-model", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, wait: bool = True) -> None:
        """End the model thread; sequences still running or waiting end with finish_reason "cancelled", and
        nothing new is taken (ShuttingDown). wait=False only asks (a signal handler: the server's responses
        then finish while it shuts down, instead of being cut by it)."""
        with self._lock:
            self._stop.set()
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join()

    def _check_open(self) -> None:
        """Refuse new work once stop was asked (under self._lock: the model thread's last sweep takes it too)."""
        if self._stop.is_set():
            raise ShuttingDown("the server is shutting down; retry on another server or after it restarts")

    def submit(self, requests: Sequence[SequenceRequest], deliver: Sequence[Callable[[Event], None]]) -> list[Ticket]:
        """Queue sequences (all or none: a request's n samples are admitted together or refused)."""
        for r in requests:
            if not r.prompt_ids:
                raise NumgptError("a prompt is empty")
            if len(r.prompt_ids) + r.max_new_tokens > self.config.n_positions:
                raise NumgptError(f"the prompt has {len(r.prompt_ids)} tokens and {r.max_new_tokens} more were "
                                  f"asked for, beyond the model's context of {self.config.n_positions}")
        if len(requests) > self.max_batch + self.max_queue:
            raise NeverFits(f"{len(requests)} sequences at once is more than the engine ever holds: "
                            f"{self.max_batch} slots + {self.max_queue} waiting = {self.max_batch + self.max_queue}")
        tickets = [Ticket(r, d) for r, d in zip(requests, deliver)]
        with self._lock:
            self._check_open()
            free = self.max_batch - len(self._running) + self.max_queue - self._waiting_count
            if len(requests) > free:
                raise QueueFull(f"the server is busy ({len(self._running)} running, {self._waiting_count} "
                                "waiting); retry later")
            self._waiting_count += len(requests)
            for t in tickets:
                self._waiting.put(t)
        self._wake.set()
        return tickets

    def call(self, fn: Callable[[], object]) -> Future:
        """Run fn() on the model thread between two loops (a forward without decoding: a batch of embeddings),
        so that two forwards never share the cores; its result or exception arrives on the Future. One call
        runs per loop, so the running sequences take a decode step between the calls of a long request."""
        future: Future = Future()
        with self._lock:
            self._check_open()
            self._calls.put((fn, future))
        self._wake.set()
        return future

    @property
    def waiting(self) -> int:
        return self._waiting_count

    @property
    def running(self) -> int:
        return len(self._running)

    # ---- the model thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._run_call()
            self._admit()
            if not self._running:
                if self._calls.empty():
                    self._wake.wait(0.05)
                self._wake.clear()
                continue
            self._step()
        for seq in list(self._running.values()):
            self._finish(seq, "cancelled")
        with self._lock:                  # submit and call take nothing more once _stop is set
            while not self._waiting.empty():
                self._waiting.get().deliver(Finished("cancelled"))
            while not self._calls.empty():
                future = self._calls.get()[1]
                if future.set_running_or_notify_cancel():     # False: its caller gave up already
                    future.set_exception(ShuttingDown("the server is shutting down"))

    def _run_call(self) -> None:
        """The oldest waiting `call`, if any."""
        try:
            fn, future = self._calls.get_nowait()
        except queue.Empty:
            return
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except Exception as e:  # noqa: BLE001 -- the caller gets it; the engine goes on
                future.set_exception(e)

    def _admit(self) -> None:
        """Prefill waiting sequences into free slots: a burst of unseeded newcomers in one forward
        (slots.prefill_slots: one pass over the weights), a seeded one alone (bit-exact, see above)."""
        newcomers = []
        while len(self._running) + len(newcomers) < self.max_batch and not self._waiting.empty():
            ticket = self._waiting.get()
            if ticket.cancelled.is_set():
                ticket.deliver(Finished("cancelled"))
                self._taken(1)
                continue
            newcomers.append(ticket)
        together = [t for t in newcomers if not t.request.seeded]
        groups = [[t] for t in newcomers if t.request.seeded] + ([together] if together else [])
        for group in groups:
            free = sorted(set(range(self.max_batch)) - set(self._running))[:len(group)]
            self._entered = 0             # how many of the group _prefill moved to running
            try:
                self._prefill(group, free)
            except Exception as e:  # noqa: BLE001 -- a bad sequence must not stop the engine
                for ticket, slot in zip(group, free):
                    self._fail(ticket, slot, e)
            finally:
                self._taken(len(group) - self._entered)   # the rest: until its slot is taken a sequence waits

    def _taken(self, n: int) -> None:
        with self._lock:
            self._waiting_count -= n

    def _prefill(self, tickets: list[Ticket], slots: list[int]) -> None:
        prompts = [t.request.prompt_ids for t in tickets]
        want_prompt = any(t.request.prompt_logprobs is not None for t in tickets)
        if len(tickets) == 1:
            logits = [prefill_slot(self.params, self.config, self.cache, slots[0], prompts[0], all_logits=want_prompt)]
        else:
            logits = prefill_slots(self.params, self.config, self.cache, slots, prompts, all_logits=want_prompt)
        self.stats.prefills += len(tickets)
        self.stats.prompt_tokens += sum(map(len, prompts))
        for ticket, slot, row in zip(tickets, slots, logits):
            try:
                self._enter(ticket, slot, row, want_prompt)
            except Exception as e:  # noqa: BLE001 -- one sequence's failure must not fail its group
                self._fail(ticket, slot, e)

    def _fail(self, ticket: Ticket, slot: int, e: BaseException) -> None:
        """End a ticket that failed while being admitted with the error e; its slot is freed if it took it."""
        if self._running.get(slot) is not None and self._running[slot].ticket is ticket:
            del self._running[slot]
        if not ticket.finished:
            ticket.finished = True
            ticket.deliver(Finished("error", error=error_text(e)))

    def _enter(self, ticket: Ticket, slot: int, row: np.ndarray, want_prompt: bool) -> None:
        """A prefilled ticket into its slot: its prompt logprobs, its finisher and drafter, then its first
        token chosen from the prefill's logits `row` ([V], or [T, V] when prompt logprobs were wanted)."""
        r = ticket.request
        prompt_lp = None
        if want_prompt:
            if r.prompt_logprobs is not None:
                prompt_lp = [None] + token_logprob_rows(row[:-1], np.asarray(r.prompt_ids[1:]), r.prompt_logprobs)
            row = row[-1]
        ticket.deliver(Prefilled(prompt_lp))
        eos = {self.tokenizer.eot_id} - {None} if r.stop_at_eos else set()
        finisher = Finisher(self.tokenizer.stream_decoder(), max_new_tokens=r.max_new_tokens, stop=r.stop,
                            eos_id=eos | set(r.end_ids), deadline=r.deadline)
        seq = Running(ticket, slot, list(r.prompt_ids), [], finisher)
        if self.speculative is not None and r.max_new_tokens > 0:
            seq.spec = speculation(self.speculative, self.num_draft, self.config, draft=self.draft,
                                   headroom=r.max_new_tokens)
            seq.spec.start([r.prompt_ids])
            seq.spec_stats = SpeculativeStats(forwards=1, tokens=1)   # the prefill and its token
        with self._lock:              # from waiting to running in one step: submit's counts stay true
            self._running[slot] = seq
            self._waiting_count -= 1
            self._entered += 1
        if finisher.reason is not None:       # max_new_tokens 0: the prompt only
            self._finish(seq)
        else:
            self._choose([seq], row[None])

    def _step(self) -> None:
        """One decode step over every running sequence (ended ones leave first)."""
        now = time.monotonic()
        for seq in list(self._running.values()):
            if seq.finisher.poll(cancelled=seq.ticket.cancelled.is_set(), now=now):
                self._finish(seq)
        if not self._running:
            return
        rows = sorted(self._running.values(), key=lambda s: s.slot)
        for seq in [s for s in rows if s.spec is not None]:    # each in its own slot (module docstring)
            try:
                self._speculate(seq)
            except Exception as e:  # noqa: BLE001 -- one sequence's failure must not stop the model thread
                self._finish(seq, "error", error=error_text(e))
        rows = [s for s in rows if s.spec is None]
        if not rows:
            return
        invariant = any(s.ticket.request.seeded for s in rows)
        try:
            logits = decode_slots(self.params, self.config, self.cache, [s.slot for s in rows],
                                  [s.pending for s in rows], batch_invariant=invariant, head=self.head)  # [N, V]
        except Exception as e:  # noqa: BLE001 -- reported to every sequence of the step, engine goes on
            for seq in rows:
                self._finish(seq, "error", error=error_text(e))
            return
        self.stats.steps += 1
        self._choose(rows, logits)

    def _choose(self, rows: list[Running], logits: np.ndarray) -> None:
        """Pick, report and record each row's next token; rows are sampled one by one with their own
        options (requests differ), which is also what keeps a row independent of its neighbours. A row
        that fails (non-finite logits: an overflow at this position) ends alone with its error; the
        engine goes on with the others."""
        for seq, row in zip(rows, logits):
            try:
                self._choose_one(seq, row)
            except Exception as e:  # noqa: BLE001 -- one sequence's failure must not stop the model thread
                self._finish(seq, "error", error=error_text(e))

    def _speculate(self, seq: Running) -> None:
        """One speculative round of a sequence in its slot: draft, verify in one forward, roll back; then
        each kept token is reported as a decode step's would be, until the sequence ends."""
        r = seq.ticket.request
        view = self.cache.view(seq.slot)                        # a one-row KVCache on the slot's memory
        cap = min(seq.spec.num_draft, r.max_new_tokens - len(seq.generated) - 1)
        chosen, logits = verify_round(self.params, self.config, view, seq.spec, [seq.tokens], [len(r.prompt_ids)],
                                      [cap], r.sampling, None if r.rng is None else [r.rng], [seq.spec_stats])
        self.cache.lengths[seq.slot] = view.length
        self.stats.steps += 1
        for j, token in enumerate(chosen[0]):
            seq.spec_stats.count_output(j, len(chosen[0]))
            self._choose_one(seq, logits[0, j], token)
            if seq.ticket.finished:
                return

    def _choose_one(self, seq: Running, row: np.ndarray, token: int | None = None) -> None:
        check_finite_logits(row[None], self.params)
        r = seq.ticket.request
        if token is None:                 # (a speculative round's tokens were chosen by speculative.verify)
            token = int(next_tokens(row[None], r.sampling, None if r.rng is None else [r.rng],
                                    previous=[seq.tokens], generated=[seq.generated])[0])
        lp = token_logprob_rows(row[None], np.asarray([token]), r.logprobs)[0] if r.logprobs is not None else None
        self.stats.tokens_generated += 1
        constraint = r.sampling.constraint
        whole = constraint is not None and constraint.completed_by(seq.generated, token)   # structured: done
        if seq.finisher.add(token, whole=whole):   # not the end-of-text token: reported with the text it freed
            seq.tokens.append(token)
            seq.generated.append(token)
            seq.ticket.deliver(Generated(token, seq.finisher.release(), lp))
            seq.pending = token
        if seq.finisher.reason is not None:
            self._finish(seq)

    def _finish(self, seq: Running, reason: str = "length", *, error: str | None = None) -> None:
        """Report the end (the sequence's own reason if it has one, else `reason`); free the slot."""
        self._running.pop(seq.slot, None)
        seq.finisher.end(reason)
        seq.ticket.finished = True
        seq.ticket.deliver(Finished(seq.finisher.reason, seq.finisher.release(), error, seq.spec_stats))
