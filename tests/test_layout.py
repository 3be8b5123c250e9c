"""The house rules of the package layout, checked on the source: `import numgpt` needs only numpy and
regex; the core never imports a room; the rooms never import the CLI; the leaf modules import nothing of
the package but its errors."""

import ast
import subprocess
import sys
from pathlib import Path

import numgpt

PACKAGE = Path(numgpt.__file__).parent
CORE = ["config", "params", "ops", "kvcache", "model", "backprop", "sampling", "generate", "scoring", "lm",
        "errors", "threads", "atomic", "slots", "embeddings", "machine"]
ROOMS = ["formats", "tokenizer", "training", "teach", "serve", "sql", "cli"]
LEAVES = ["config", "ops", "sampling", "kvcache", "errors", "threads", "atomic", "machine"]   # STYLE.md's import direction


def package_imports(path: Path) -> set[str]:
    """The numgpt modules a file imports (absolute names, at any depth of the file)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            found |= {target} if node.module else {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("numgpt"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("numgpt")}
    return found


def test_import_numgpt_needs_only_numpy_and_regex():
    code = ("import sys, numgpt, numgpt.cli; numgpt.cli.build_parser(); "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                 .stdout.split())
    optional = {"torch", "transformers", "tqdm", "matplotlib", "duckdb", "psycopg", "fastapi", "uvicorn",
                "mpi4py", "huggingface_hub", "threadpoolctl", "tiktoken", "safetensors", "prometheus_client",
                "starlette", "pydantic"}
    assert {"numpy", "regex", "numgpt"} <= loaded and not loaded & optional, loaded & optional


def test_the_core_imports_no_room_and_the_rooms_no_cli():
    for name in CORE:
        rooms = {m for m in package_imports(PACKAGE / f"{name}.py")
                 if m.split(".")[1] in ROOMS and m.split(".")[1] != "formats"}
        assert not rooms, (name, rooms)          # lm loads through formats; nothing in the core trains or prints
    for room in ("formats", "tokenizer", "training", "teach", "serve", "sql"):
        for path in (PACKAGE / room).glob("*.py"):
            assert not {m for m in package_imports(path) if m.startswith("numgpt.cli")}, path


def test_leaf_modules_import_only_errors():
    for name in LEAVES:
        allowed = {"numgpt.errors", f"numgpt.{name}"} \
            | ({"numgpt.config", "numgpt.machine"} if name == "kvcache" else set()) \
            | ({"numgpt.ops"} if name == "sampling" else set())
        assert package_imports(PACKAGE / f"{name}.py") <= allowed, (name, package_imports(PACKAGE / f"{name}.py"))
    for path in (PACKAGE / "tokenizer").glob("*.py"):
        outside = {m for m in package_imports(path) if not m.startswith("numgpt.tokenizer")}
        assert outside <= {"numgpt.errors", "numgpt.atomic"}, (path, outside)


def test_serve_has_one_error_shape_short_functions_and_no_import_circle():
    """serve/ is split by responsibility (STYLE.md, vLLM): OpenAI's error body is built in errors.py only
    (no other module writes a dict with an "error" key), no function is over 60 lines, and the modules
    import each other without a circle."""
    serve = sorted((PACKAGE / "serve").glob("*.py"))
    for path in serve:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and path.name != "errors.py":
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                assert "error" not in keys, f"{path.name}:{node.lineno} builds an error body: use errors.error_json"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}:{node.lineno} {node.name} is {length} lines (at most 60)"
    graph = {f"numgpt.serve.{p.stem}": {m for m in package_imports(p) if m.startswith("numgpt.serve.")}
             for p in serve if p.name != "__init__.py"}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m, {m})], {m: graph[m] for m in graph if reaches(m, m, {m})}


SQL_ENGINE_MODULES = {"engines.py", "engine_duckdb.py", "engine_postgres.py", "dialects.py"}


def test_no_engine_name_branches_outside_the_sql_engine_modules():
    """The SQL engine is an object (numgpt/sql/engines.py): a DuckDB engine and a PostgreSQL engine with
    the same methods. No code outside the engine modules compares anything with "duckdb" or "postgresql"
    (a `name == "duckdb"` branch belongs in a method of each engine)."""
    names = {"duckdb", "postgresql"}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "sql" and path.name in SQL_ENGINE_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                strings = {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
                strings |= {e.value for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set))
                            for e in o.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                assert not strings & names, f"{path.relative_to(PACKAGE)}:{node.lineno} branches on an engine name"


def test_the_finish_rule_is_a_leaf_and_the_decoding_flags_are_made_in_one_place():
    """numgpt/finish.py (when a sequence ends) imports nothing of the package, and no CLI module but
    cli/options.py spells a decoding flag in add_argument: they are generated from the option dataclasses."""
    assert package_imports(PACKAGE / "finish.py") <= {"numgpt.errors"}
    decoding = {"--max-new-tokens", "--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "--greedy", "--logit-bias",
                "--presence-penalty", "--frequency-penalty", "--stop", "--ignore-eos", "--num-samples", "--seed",
                "--sliding-window", "--window-stride"}
    for path in (PACKAGE / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                spelled = {a.value for a in node.args if isinstance(a, ast.Constant)} & decoding
                allowed = path.name in ("options.py", "train_commands.py", "data_commands.py", "classify_commands.py",
                                        "sft_commands.py", "reward_commands.py")    # their --seed seeds no sampler
                assert not spelled or allowed, f"{path.name}:{node.lineno} defines {spelled}: use options.add_decoding_flags"


def built_block_name(index: ast.expr) -> bool:
    """An index that builds a block tensor's name: f"h.{i}...." or h + "ln_1.weight"."""
    if isinstance(index, ast.JoinedStr):
        first = index.values[0] if index.values else None
        return isinstance(first, ast.Constant) and str(first.value).startswith("h.")
    return isinstance(index, ast.BinOp) and isinstance(index.op, ast.Add) and isinstance(index.right, ast.Constant) \
        and str(index.right.value).endswith((".weight", ".bias"))


def test_one_forward_family_read_through_the_layer_view():
    """A NumPy transformer block is written in model.py (plain, fast, slot-batched decode) or backprop.py
    (the training pair) only -- nothing else reads a layer's ln_1/ln_2 -- and the package indexes block
    tensors through params.layer(i), never by a name it builds (params[h + "ln_1.weight"]); the checkpoint
    and SQL export code, which store tensors by name, excepted."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("ln_1", "ln_2"):
                assert rel in ("model.py", "backprop.py"), f"{rel}:{node.lineno} writes a block outside model.py"
            if isinstance(node, ast.Subscript) and built_block_name(node.slice):
                assert rel == "params.py" or rel.split("/")[0] in ("formats", "sql"), \
                    f"{rel}:{node.lineno} builds a block tensor's name: use params.layer(params, i)"


def test_the_training_step_reads_in_one_screen_and_names_no_backend():
    """issue 20 §4: loop.train_step is one screen (batch, forward/backward over the row split, sum over the
    ranks, clip, update) and calls the optimizer and the loss through their interfaces: it never asks which
    optimizer (ZeRO or not), communicator or loss it has. Run setup is the library's (training/run.py):
    the CLI's train command calls it and builds no state itself."""
    import inspect
    import re
    from numgpt.cli import train_commands
    from numgpt.training import loop
    step = inspect.getsource(loop.train_step)
    assert len(step.splitlines()) <= 30
    assert not re.search(r"\bzero\b|Zero|MPI|ThreadGroup|isinstance|next_token|backprop", step)
    cli = inspect.getsource(train_commands)
    assert "setup_run(" in cli and not re.search(r"\b(new_state|init_params|load_checkpoint)\(", cli)


def test_posttrain_is_a_room_nothing_below_the_cli_imports():
    """numgpt/posttrain (fine-tuning data, issue 21) imports the core, never the CLI; the core and the other
    rooms never import it, and `import numgpt` does not load it."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        imports = package_imports(path)
        if rel[0] == "posttrain":
            assert not {m for m in imports if m.startswith("numgpt.cli")}, path
        elif rel[0] != "cli":
            assert not {m for m in imports if m.startswith("numgpt.posttrain")}, path
    code = "import sys, numgpt; print(any(m.startswith('numgpt.posttrain') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_import_numgpt_loads_no_numpy_until_asked():
    # the console script imports numgpt.cli before main() can catch a Ctrl-C: with NumPy and the API loaded
    # there, a Ctrl-C in a command's first ~0.3 s printed a traceback (main loads them now, under its guard)
    code = ("import sys, numgpt, numgpt.cli; before = 'numpy' in sys.modules; numgpt.load; "
            "print(before, 'numpy' in sys.modules, 'load' in dir(numgpt))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"], out
