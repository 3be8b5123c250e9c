"""A session on an exported database: tokenize, next-token distribution, generation -- every number
computed by the database. Python sends the stored statements one stage at a time with their parameters
(the layer, the first new position, the sampling options, the seed) and streams what comes back: token
ids and their bytes, which it decodes to text as numgpt's generate does (UTF-8 safe, stop strings).

    import numgpt.sql
    with numgpt.sql.connect("gpt2.duckdb") as m:          # or "postgresql://user@host/db"
        m.tokenize("Hello world")                          # [15496, 995]
        m.next("I wish you a happy New", top=3)           # [NextToken(id=..., token=' Year', probability=...)]
        for piece in m.stream("Once upon a time", max_new_tokens=20, seed=1):
            print(piece, end="", flush=True)
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import GPTConfig
from ..errors import NumgptError, whole_number
from ..finish import Finisher
from ..generate import GenerationOptions
from ..lm import NextToken
from ..model import check_context
from ..tokenizer import StreamDecoder
from .engines import Engine, open_engine, shown
from .export import FORMAT, SCHEMA_VERSION, TABLES
from .statements import Stage

# the decoding options the SQL computes (statements.py's greedy and sample, the session's loop); the others
# of GenerationOptions / SamplingOptions are refused by name (sql_generation_options)
SQL_OPTIONS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "seed",
               "stop", "stop_at_eos")


@dataclass(frozen=True)
class StageTime:
    """One connection's run of one stage, for profiling (SqlModel.trace): perf_counter seconds at its
    start and end as the calling thread saw them (the round trip, the server's work within it)."""

    stage: str
    layer: int | None
    connection: int   # 0: the session's own connection, 1..: the workers
    start: float
    end: float


@dataclass(frozen=True)
class MergeStepRow:
    """One step of `explain`: the piece, the rank merged at this step (None at step 0: the piece's
    bytes), the token ids after it."""

    piece_no: int
    piece: str
    step: int
    rank: int | None
    ids: tuple[int, ...]
    special: bool


def connect(db: str, *, threads: int | None = None, connections: int | None = None) -> "SqlModel":
    """Open an exported database (a DuckDB file path or a postgresql:// URL) and check what it holds:
    a one-line NumgptError for a missing, foreign or damaged database, another version's export, an
    export that was interrupted, is incomplete, is under way, or that the role may not read. The
    session only reads the export (DuckDB: the file attached read-only; PostgreSQL: a shared lock that
    keeps an export out until it closes).

    threads: DuckDB's worker threads. connections: PostgreSQL connections that compute each product
    together, each a range of its outputs on a server process of its own (default 2: a server runs
    one statement on one core); their state sits in UNLOGGED tables of a schema made for the session
    and dropped at close, and where the role may not create a schema (or the server takes no more
    connections) the session uses one connection and temporary tables."""
    if connections is not None:
        connections = whole_number("connections", connections, minimum=1)
    engine = open_engine(db, create=False, threads=threads)
    try:
        engine.hold_for_reading()
        meta = read_meta(engine)
        return SqlModel(engine, meta, connections=connections or engine.default_connections)
    except BaseException:
        engine.close()
        raise


def read_meta(engine: Engine) -> dict[str, str]:
    """numgpt_meta, checked: made by numgpt, this schema version, complete."""
    where = shown(engine.db)
    denied = engine.unreadable(TABLES)
    if denied:
        raise NumgptError(f"{where} holds a numgpt export that this role may not read (no SELECT on "
                          f"{denied[0]}); ask its owner to GRANT SELECT ON ALL TABLES IN SCHEMA public to it")
    if not engine.has_table("numgpt_meta"):
        raise NumgptError(f"{where} holds no numgpt export (no numgpt_meta table); make one with "
                          f"`numgpt sql export --db {where}`")
    meta = dict(engine.rows("SELECT key, value FROM numgpt_meta"))
    if meta.get("format") != FORMAT:
        raise NumgptError(f"{where} has a numgpt_meta table that numgpt did not write "
                          f"(format {meta.get('format')!r}); use another database")
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise NumgptError(f"{where} holds an export of schema version {meta.get('schema_version')}, this "
                          f"numgpt reads version {SCHEMA_VERSION}; export again with `numgpt sql export "
                          f"--force --db {where}`")
    if meta.get("state") != "complete":
        raise NumgptError(f"the export into {where} was interrupted before it completed; run `numgpt sql "
                          f"export --force --db {where}` again")
    missing = [t for t in TABLES if not engine.has_table(t)]
    if missing:
        raise NumgptError(f"the export in {where} is incomplete: table {missing[0]} is missing; export again "
                          f"with `numgpt sql export --force --db {where}`")
    return meta


class SqlModel:
    """GPT-2 running inside a database; made by `connect`. Close it (or use `with`) when done."""

    def __init__(self, engine: Engine, meta: dict[str, str], *, connections: int = 1):
        self.engine = engine
        self.meta = meta
        self.config = GPTConfig(**json.loads(meta["config"]))
        self.precision = meta["precision"]
        self.statements = {name: sql for name, sql in engine.rows("SELECT name, sql FROM numgpt_sql ORDER BY position")}
        self.descriptions = dict(engine.rows("SELECT name, description FROM numgpt_sql"))
        specials = dict(engine.rows("SELECT token, id FROM numgpt_special"))
        self.eot_id: int | None = specials.get("<|endoftext|>")
        self.stages: list[Stage] = engine.forward_stages(self.config)
        self.workers: list[Engine] = engine.open_workers(connections - 1)   # the other connections
        self._pool = (ThreadPoolExecutor(max_workers=len(self.workers), thread_name_prefix="numgpt-sql")
                      if self.workers else None)
        try:
            for sql in engine.state_tables(self.config, shared=bool(self.workers)):
                engine.execute(sql)
        except BaseException:
            self.close()   # the other connections and the session's schema too
            raise
        self._bytes: dict[int, bytes] = {}
        self.length = 0   # positions in the KV cache
        # set to a list to have every stage's run on every connection appended to it (bench/bench_sql.py)
        self.trace: list[StageTime] | None = None
        self.finish_reason: str | None = None   # why the last stream ended (finish.FINISH_REASONS)

    def _close_workers(self) -> None:
        """The other connections and their threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for worker in self.workers:
            worker.close()
        self.workers = []

    @property
    def connections(self) -> int:
        return 1 + len(self.workers)

    @property
    def run_schema(self) -> str | None:
        """PostgreSQL: the schema of a multi-connection session's state (dropped at close)."""
        return self.engine.run_schema

    def __enter__(self) -> "SqlModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._close_workers()
        self.engine.close()

    def __repr__(self) -> str:
        c = self.config
        return (f"SqlModel({shown(self.engine.db)!r}, engine={self.engine.name}, precision={self.precision}, "
                f"connections={self.connections}, n_layer={c.n_layer}, n_embd={c.n_embd}, vocab_size={c.vocab_size})")

    # ---- tokenizer --------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Text -> token ids, computed by the `tokenize` statement (special tokens written in the text
        are those tokens)."""
        return [int(i) for _, i in self.engine.rows(self.statements["tokenize"], {"text": _text(text)})]

    def explain(self, text: str) -> list[MergeStepRow]:
        """Every merge step of every piece, as the SQL computed them."""
        return [MergeStepRow(int(n), piece, int(step), rank, tuple(int(i) for i in ids.strip("()").split(")(")),
                             bool(special))
                for n, piece, step, rank, ids, special
                in self.engine.rows(self.statements["tokenize_explain"], {"text": _text(text)})]

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """The bytes each token stands for (numgpt_vocab)."""
        found = {}
        for i in sorted(set(int(t) for t in ids) - set(self._bytes)):
            rows = self.engine.rows("SELECT bytes FROM numgpt_vocab WHERE id = :id", {"id": i})
            found[i] = bytes(rows[0][0]) if rows else b""
        self._bytes.update(found)
        return [self._bytes[int(t)] for t in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(ids)).decode("utf-8", "replace")

    # ---- the model --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the sequence and the KV cache."""
        self.engine.clear_sequence()
        self.length = 0

    def start(self, prompt: str | Sequence[int]) -> int:
        """A new sequence from a prompt (text, tokenized in SQL, or token ids): it is written to
        numgpt_seq and prefilled into the KV cache, leaving the last position's logits in numgpt_logits.
        Returns the number of prompt tokens."""
        self.reset()
        if isinstance(prompt, str):
            self.engine.execute("INSERT INTO numgpt_seq SELECT pos, id FROM (" + self.statements["tokenize"]
                                + ") AS tokens", {"text": _text(prompt)})
            n = int(self.engine.rows("SELECT count(*) FROM numgpt_seq")[0][0])
            if n == 0:
                if self.eot_id is None:
                    raise NumgptError("the prompt is empty and the vocabulary has no <|endoftext|> to start "
                                      "from; give a prompt")
                self._append(0, self.eot_id)
                n = 1
        else:
            ids = [int(i) for i in prompt]
            if not ids:
                raise NumgptError("the prompt is empty: give at least one token id")
            bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
            if bad:
                raise NumgptError(f"token ids must be in 0..{self.config.vocab_size - 1}, got {bad[0]}")
            for pos, i in enumerate(ids):
                self._append(pos, i)
            n = len(ids)
        check_context(self.config, n, fix="shorten the prompt")
        self._forward(0, n)
        return n

    def feed(self, token: int) -> None:
        """Append one token and run one decode step: one new position through every layer, attending to
        the KV cache; the new logits replace the old in numgpt_logits."""
        check_context(self.config, self.length + 1, fix="shorten the prompt or generate fewer tokens")
        self._append(self.length, int(token))
        self._forward(self.length, self.length + 1)

    def _append(self, pos: int, token: int) -> None:
        self.engine.execute("INSERT INTO numgpt_seq VALUES (CAST(:pos AS INTEGER), CAST(:id AS INTEGER))",
                            {"pos": pos, "id": token})

    def _forward(self, past: int, end: int) -> None:
        """Positions past .. end-1 through the model: the stages of forward_stages (embed, each block's
        stages, logits), a product stage's outputs split over the session's connections, after the
        engine has cleared what the last step left (engine.clear_step)."""
        self.engine.clear_step(past)
        params = {"past": past, "last": end - 1}
        first, *block, last = self.stages
        self._run_stage(first, params)
        for layer in range(self.config.n_layer):
            for stage in block:
                self._run_stage(stage, {**params, "layer": layer})
        self._run_stage(last, params)
        self.length = end

    def _run_stage(self, stage: Stage, params: dict[str, int]) -> None:
        """One stage; a product's outputs 0 .. outputs-1 cut into one range per connection, all run at
        once (each connection's server process on its own core)."""
        sql = self.statements[stage.name]
        ranges = ([{"lo": lo, "hi": hi} for lo, hi in output_ranges(stage.outputs, stage.align, self.connections)]
                  if stage.outputs else [{}])
        run = self._run_traced if self.trace is not None else _run_plain
        futures = [self._pool.submit(run, worker, k, stage, sql, {**params, **r})
                   for k, (worker, r) in enumerate(zip(self.workers, ranges[1:]), 1)]
        try:
            run(self.engine, 0, stage, sql, {**params, **ranges[0]})
        finally:
            for f in futures:
                f.result()

    def _run_traced(self, engine: Engine, connection: int, stage: Stage, sql: str, params: dict[str, int]) -> None:
        """_run_plain, its start and end appended to self.trace (list.append is atomic under the GIL)."""
        start = time.perf_counter()
        engine.execute_prepared(sql, params)
        self.trace.append(StageTime(stage.name, params.get("layer"), connection, start, time.perf_counter()))

    def logits(self) -> np.ndarray:
        """The current logits [V] as float64 (for tests and the curious; generation never fetches them)."""
        rows = self.engine.rows("SELECT id, v FROM numgpt_logits ORDER BY id")
        out = np.full(self.config.vocab_size, np.nan)
        out[[r[0] for r in rows]] = [r[1] for r in rows]
        return out

    def kept(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             repetition_penalty: float = 1.0) -> list[int]:
        """The token ids the sampling filters keep on the current logits (the `sample` statement's
        filters, without the draw): for comparing with numgpt.sampling."""
        sql = self.statements["sample"]
        head = sql[:sql.index(",\ncdf AS (")]
        rows = self.engine.rows(head + "\nSELECT id FROM top_p ORDER BY id",
                                _sampling_params(temperature, top_k, top_p, repetition_penalty, 0, 0))
        return [int(r[0]) for r in rows]

    def pick(self, *, greedy: bool, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             repetition_penalty: float = 1.0, seed: int = 0, step: int = 0) -> int:
        """The next token from the current logits, chosen in SQL (`greedy` or `sample`)."""
        if greedy:
            rows = self.engine.rows(self.statements["greedy"], {"penalty": float(repetition_penalty)})
        else:
            rows = self.engine.rows(self.statements["sample"], _sampling_params(
                temperature, top_k, top_p, repetition_penalty, seed, step))
        token, data = rows[0]
        self._bytes[int(token)] = bytes(data) if data is not None else b""
        return int(token)

    # ---- the everyday jobs ------------------------------------------------------------------------

    def next(self, prompt: str, *, top: int = 10) -> list[NextToken]:
        """The `top` most likely next tokens after the prompt with their probabilities (softmax of the raw
        logits), most likely first -- all computed by the `next` statement."""
        top = min(whole_number("top", top, minimum=1), self.config.vocab_size)   # (numgpt next's rule; a
        self.start(_text(prompt))                                                  # huge one overflowed INT64)
        rows = self.engine.rows(self.statements["next"], {"top": top})
        return [NextToken(int(i), bytes(b or b"").decode("utf-8", "replace"), float(p)) for i, b, p in rows]

    def stream(self, prompt: str | Sequence[int], **options: Any) -> Iterator[str]:
        """Generate, yielding text as it becomes final. Options as numgpt's generate, those the SQL
        computes (SQL_OPTIONS: max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
        seed, stop, stop_at_eos); any other is refused by name. Ends by numgpt's one rule (finish.py:
        <|endoftext|> not included, a stop string, max_new_tokens); `finish_reason` then says which."""
        opts = sql_generation_options(options)
        s = opts.sampling
        seed = opts.seed if opts.seed is not None else secrets.randbits(63)
        n = self.start(prompt if isinstance(prompt, str) else list(prompt))
        check_context(self.config, n, opts.max_new_tokens, fix="shorten the prompt or lower max_new_tokens")
        finisher = Finisher(StreamDecoder(lambda i: self._bytes[i]), max_new_tokens=opts.max_new_tokens,
                            stop=opts.stop, eos_id=self.eot_id if opts.stop_at_eos else None)
        self.finish_reason = finisher.reason
        step = 0
        while not finisher.reason:
            token = self.pick(greedy=s.greedy, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                              repetition_penalty=s.repetition_penalty, seed=seed, step=step)
            finisher.add(token)
            piece = finisher.release()
            if piece:
                yield piece
            if not finisher.reason:
                self.feed(token)
                step += 1
        self.finish_reason = finisher.reason
        piece = finisher.release()
        if piece:
            yield piece

    def generate(self, prompt: str | Sequence[int], **options: Any) -> str:
        """The new text (see `stream`)."""
        return "".join(self.stream(prompt, **options))


def _run_plain(engine: Engine, connection: int, stage: Stage, sql: str, params: dict[str, int]) -> None:
    engine.execute_prepared(sql, params)


def output_ranges(n: int, align: int, parts: int) -> list[tuple[int, int]]:
    """0 .. n cut into at most `parts` ranges of nearly equal size, each boundary a multiple of align
    (c_attn's ranges end at a head's boundary: a head's q, k or v is built from one range)."""
    units = n // align
    parts = max(1, min(parts, units))
    cuts = [align * (units * k // parts) for k in range(parts)] + [n]
    return list(zip(cuts[:-1], cuts[1:]))


def sql_generation_options(options: Mapping[str, Any]) -> GenerationOptions:
    """The options checked as numgpt's generate checks them, then refused by name where the SQL does not
    compute them (a value other than the default: min_p, the OpenAI penalties, logit_bias, several
    sequences, the sliding window, logprobs), rather than silently ignored."""
    opts = GenerationOptions.from_mapping(options)
    unsupported = [name for name in opts.as_mapping() if name not in SQL_OPTIONS]
    if unsupported:
        raise NumgptError(f"numgpt sql does not compute {', '.join(unsupported)}: its SQL generates one sequence "
                          f"with {', '.join(SQL_OPTIONS)}")
    return opts


def _sampling_params(temperature: float, top_k: int, top_p: float, penalty: float, seed: int, step: int) -> dict:
    # top_k at most INT32's largest (any k past the vocabulary keeps every token; a huge one overflowed INT64)
    return {"temperature": float(temperature) or 1.0, "top_k": min(int(top_k), 2**31 - 1), "top_p": float(top_p),
            "penalty": float(penalty), "seed": int(seed), "step": int(step)}


def _text(value: object) -> str:
    """A str the database can take: UTF-8 text (Python keeps undecodable argv bytes as lone surrogates,
    which the engines refuse with a conversion error)."""
    if not isinstance(value, str):
        raise NumgptError(f"the text must be a str, got {type(value).__name__}")
    bad = next((i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        raise NumgptError(f"the text is not valid UTF-8: a lone surrogate U+{ord(value[bad]):04X} at character {bad}")
    return value
