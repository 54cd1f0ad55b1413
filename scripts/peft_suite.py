"""Run PEFT's own test suite on the reference ``peft`` and on peftkit; print per-file pass counts.

Steps: download the reference's source distribution with pip (cached under ``--workdir``), unpack its
``tests/``, collect the chosen test files on the reference and keep the tests that are in scope by method (every
adapter method they touch is in peftkit's catalog, ``src/peftkit/catalog.py``; no GPU marker), run those tests on
the reference, then on peftkit through ``peft_suite_shim`` (``import peft`` -> ``peftkit`` under the same relative
paths, placeholders for what peftkit lacks), and print per file: selected, passed on the reference, passed on
peftkit (of those), and tests that fail on the reference because they need the model hub (offline here:
out of scope, counted apart). PEFT calls its LoRA variants (DoRA, VeLoRA, BD-LoRA, ...) and initialisations
(PiSSA, EVA, ...) methods built on LoRA: the columns ``+v`` count again only the tests whose every variant is one
peftkit declares (``LORA_VARIANTS`` in the catalog), the honest scope.

Run it nice'd on the shared machine: ``nice -n 10 python scripts/peft_suite.py`` (everything in scope), or a
subset: ``python scripts/peft_suite.py --files test_config.py test_mapping.py -k lora``.
Outputs under the workdir: ``selection.json``, ``results-reference.jsonl``, ``results-peftkit.jsonl``,
``missing.json`` (PEFT paths and names peftkit lacks, with how often tests reached them), ``summary.json``.

``--local-hub DIR`` runs the tests that load models from the hub (``test_decoder_models.py``, ...) offline: it builds
once, into ``DIR``, tiny random stand-ins for the model ids those tests load (``peft_suite_hub``) laid out as a hub
cache, and points ``HF_HUB_CACHE`` at it on both sides, e.g.
``python scripts/peft_suite.py --local-hub /tmp/x/hub --files test_decoder_models.py --sample 8``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
# Files left out whole: GPU-only suites, diffusers pipelines, Megatron and GPTQModel backends.
EXCLUDED_FILES = {
    "test_gpu_examples.py",
    "test_common_gpu.py",
    "test_stablediffusion.py",
    "test_lora_megatron.py",
    "test_gptqmodel.py",
}
# PEFT's test requirements missing from the project's environments (pure Python, installed under --workdir).
TEST_DEPENDENCIES = ["parameterized"]
HUB_ERRORS = re.compile(
    r"huggingface\.co|offline mode|LocalEntryNotFound|OfflineModeIsEnabled|HF_HUB_OFFLINE|"
    r"couldn't connect|Cannot find the requested files in the disk cache|is not a local folder and is not a valid "
    r"model identifier|outgoing traffic has been disabled|Repository Not Found|hf_hub_download|"
    r"Can't find 'adapter_config.json' at '[\w-]+/|-internal-testing/"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", default="0.21.2", help="reference peft version (its sdist holds the tests)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/peft_suite"), help="download/unpack/results")
    parser.add_argument("--files", nargs="*", default=None, help="test files to run (default: all in scope)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to narrow the tests")
    parser.add_argument(
        "--side",
        choices=["both", "reference", "peftkit", "report"],
        default="both",
        help="which side to run; the other side's results are read from the workdir ('report': run none)",
    )
    parser.add_argument("--peftkit-src", type=Path, default=REPO / "src", help="the peftkit source tree to test")
    parser.add_argument("-n", "--workers", type=int, default=0, help="pytest-xdist workers (0: none)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per side before the run is stopped")
    parser.add_argument("--reuse-selection", action="store_true", help="reuse the workdir's last selection.json")
    parser.add_argument(
        "--sample", type=int, default=1, help="run one in-scope test in SAMPLE (a fixed hash of its id), for speed"
    )
    parser.add_argument(
        "--rerun-failures",
        action="store_true",
        help="peftkit side only: rerun the tests that pass on the reference but failed on peftkit last time",
    )
    parser.add_argument(
        "--local-hub", type=Path, default=None, help="build tiny stand-ins for hub model ids here; use as HF_HUB_CACHE"
    )
    return parser.parse_args(argv)


def fetch_tests(version: str, workdir: Path) -> Path:
    """Download and unpack ``peft==version``'s sdist once; return its ``tests`` folder, made importable."""
    root = workdir / f"peft-{version}"
    if not (root / "tests").is_dir():
        workdir.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", f"peft=={version}", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "-d", str(workdir), "-q"], check=True)
        with tarfile.open(workdir / f"peft-{version}.tar.gz") as archive:
            archive.extractall(workdir, filter="data")
    tests = root / "tests"
    (tests / "__init__.py").touch()  # the test modules import each other relatively
    # PEFT's own pytest settings, without its coverage options (pytest-cov is not a dependency here).
    (root / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    single_gpu_tests\n    multi_gpu_tests\n    regression\n    bitsandbytes\n"
        "filterwarnings =\n    error::DeprecationWarning:transformers\n"
        "    ignore:.*BPE.__init__ will not create from files anymore.*:DeprecationWarning:transformers\n"
        "    error::FutureWarning:transformers\n"
        # peft 0.21.2 and its tests call `is_gradient_checkpointing` / `gradient_checkpointing_enable`, deprecated by
        # transformers 5.23: on a real PreTrainedModel (the hub-model files) the reference fails the filter above.
        "    ignore:`is_gradient_checkpointing` is deprecated:FutureWarning\n"
        "    ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning\n"
    )
    return tests


def in_scope_methods(peftkit_src: Path) -> list[str]:
    """The ``peft_type`` names of peftkit's catalog, read from the source tree under test."""
    text = (peftkit_src / "peftkit" / "catalog.py").read_text(encoding="utf-8")
    return re.findall(r'^\s*"([A-Z0-9_]+)":\s*"peftkit\.', text, flags=re.MULTILINE)


def declared_variants(peftkit_src: Path) -> list[str]:
    """The LoRA variants peftkit declares it implements (``LORA_VARIANTS`` of its catalog), read from the source
    tree under test without importing it; none when the catalog declares none."""
    tree = ast.parse((peftkit_src / "peftkit" / "catalog.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id == "LORA_VARIANTS" and node.value is not None:
            value = node.value
            if isinstance(value, ast.Call) and value.args:  # frozenset({...})
                value = value.args[0]
            return sorted(ast.literal_eval(value))
    return []


def default_files(tests: Path, methods: list[str]) -> list[str]:
    """Every ``test_*.py`` except the excluded ones and those named after a method outside ``methods``."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING  # the reference: only to name the other methods

    squash = {str(getattr(t, "value", t)).lower().replace("_", "") for t in PEFT_TYPE_TO_CONFIG_MAPPING}
    others = tuple(squash - {m.lower().replace("_", "") for m in methods})
    names = sorted(p.name for p in tests.glob("test_*.py"))
    return [n for n in names if n not in EXCLUDED_FILES and not n[5:-3].replace("_", "").startswith(others)]


def install_test_dependencies(workdir: Path) -> Path:
    """PEFT's test-only dependencies that the environment may lack, installed into the workdir (not the env)."""
    target = workdir / "test-deps"
    if not (target / "parameterized").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        subprocess.run([*pip, *TEST_DEPENDENCIES], check=True)
    return target


def pytest_env(side: str, workdir: Path, peftkit_src: Path, local_hub: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if local_hub is not None:
        env["HF_HUB_CACHE"] = str(local_hub)
    # PEFT's `hub_online_once` lifts offline mode for a model's first load: an endpoint that refuses at once
    # makes those (hub-only, out-of-scope) tests fail in milliseconds instead of after the retries' timeouts.
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    paths = [str(SCRIPTS), str(workdir / "test-deps")] + ([str(peftkit_src)] if side == "peftkit" else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env["PEFT_SUITE_MISSING"] = str(workdir / "missing.json")
    return env


def pytest_command(tests: Path, extra: list[str], side: str, workers: int) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "peft_suite_plugin"]
    command += ["--continue-on-collection-errors"]  # one file that fails to import must not stop the others
    command += [
        "--rootdir",
        str(tests.parent),
        "-c",
        str(tests.parent / "pytest.ini"),
        "-o",
        "console_output_style=classic",
    ]
    if side == "peftkit":
        command += ["-p", "peft_suite_shim"]
    if workers:
        command += ["-n", str(workers)]
    return command + extra


def select(args: argparse.Namespace, tests: Path, methods: list[str], variants: list[str]) -> list[dict]:
    """Collect the chosen files on the reference and return the scope decision of each test."""
    files = args.files or default_files(tests, methods)
    target = args.workdir / "selection.json"
    target.unlink(missing_ok=True)
    env = pytest_env("reference", args.workdir, args.peftkit_src, args.local_hub)
    env.update(
        PEFT_SUITE_SELECT=str(target), PEFT_SUITE_METHODS=",".join(methods), PEFT_SUITE_VARIANTS=",".join(variants)
    )
    extra = ["--collect-only", *(["-k", args.keyword] if args.keyword else []), *[str(tests / f) for f in files]]
    done = subprocess.run(
        pytest_command(tests, extra, "reference", 0), env=env, cwd=tests.parent, capture_output=True, text=True
    )
    errors = [line for line in done.stdout.splitlines() if line.startswith("ERROR ")]
    for line in errors:
        print("collection:", line, file=sys.stderr)
    return json.loads(target.read_text()) if target.exists() else []


def run_side(
    args: argparse.Namespace, tests: Path, side: str, nodeids: list[str], suffix: str = ""
) -> dict[str, tuple[str, str]]:
    """Run ``nodeids`` on one side; return ``nodeid -> (outcome, message)`` (a missing test: "not run")."""
    results = args.workdir / f"results-{side}{suffix}.jsonl"
    results.unlink(missing_ok=True)
    listing = args.workdir / f"nodeids-{side}.txt"
    listing.write_text("\n".join(nodeids) + "\n")
    env = pytest_env(side, args.workdir, args.peftkit_src, args.local_hub)
    env.update(PEFT_SUITE_RESULTS=str(results), PEFT_SUITE_ONLY=str(listing))
    files = sorted({str(tests.parent / nodeid.split("::")[0]) for nodeid in nodeids})
    command = pytest_command(tests, files, side, args.workers)
    log = (args.workdir / f"log-{side}.txt").open("w")
    try:
        subprocess.run(command, env=env, cwd=tests.parent, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"{side}: stopped after {args.timeout} s; counting what finished", file=sys.stderr)
    return read_results(results)


def rerun_failures(args: argparse.Namespace, tests: Path, selected: list[str], reference: dict, peftkit: dict) -> dict:
    """Run again, on peftkit, the tests that pass on the reference and did not on peftkit; fold the new outcomes
    into ``results-peftkit.jsonl`` (a test the rerun does not reach counts as not run)."""
    again = [n for n in selected if reference.get(n, ("",))[0] == "passed" and peftkit.get(n, ("",))[0] != "passed"]
    print(f"rerunning {len(again)} peftkit failures")
    fresh = run_side(args, tests, "peftkit", again, suffix="-rerun") if again else {}
    merged = {**peftkit, **{n: fresh.get(n, ("failed", "not run")) for n in again}}
    rows = [{"nodeid": n, "when": "call", "outcome": o, "message": m} for n, (o, m) in merged.items()]
    (args.workdir / "results-peftkit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return merged


def read_results(path: Path) -> dict[str, tuple[str, str]]:
    """Fold the per-phase lines into one outcome per test: failed beats skipped beats passed."""
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    outcomes: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return outcomes
    for line in path.read_text().splitlines():
        row = json.loads(line)
        old = outcomes.get(row["nodeid"], ("passed", ""))
        if row["nodeid"] not in outcomes or rank[row["outcome"]] > rank[old[0]]:
            outcomes[row["nodeid"]] = (row["outcome"], row.get("message", ""))
    return outcomes


_COUNTS = ("selected", "hub", "ref", "kit")


def tabulate(
    selected: list[str], reference: dict, peftkit: dict, narrow: set[str] | None = None
) -> dict[str, dict[str, int]]:
    """Per file: selected, hub (reference fails for want of the hub), reference passes, peftkit passes of those;
    with ``narrow`` (the tests in scope by method and LoRA variant too) the same four counts for those tests under
    ``v_selected``, ``v_hub``, ``v_ref``, ``v_kit``."""
    keys = [*_COUNTS, *(f"v_{k}" for k in _COUNTS)] if narrow is not None else list(_COUNTS)
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(keys, 0))
    for nodeid in selected:
        row = table[nodeid.split("::")[0].split("/")[-1]]
        outcome, message = reference.get(nodeid, ("not run", ""))
        counts = {
            "selected": 1,
            "hub": outcome == "failed" and bool(HUB_ERRORS.search(message)),
            "ref": outcome == "passed",
            "kit": outcome == "passed" and peftkit.get(nodeid, ("not run", ""))[0] == "passed",
        }
        for key, add in counts.items():
            row[key] += int(add)
            if narrow is not None and nodeid in narrow:
                row[f"v_{key}"] += int(add)
    return dict(sorted(table.items()))


def _share(row: dict[str, int], prefix: str = "") -> str:
    return f"{100 * row[prefix + 'kit'] / row[prefix + 'ref']:.1f}" if row[prefix + "ref"] else "-"


def render(table: dict[str, dict[str, int]]) -> str:
    """The per-file table and its total; with variant counts (see :func:`tabulate`) four more columns: the tests
    in scope by method and LoRA variant (``sel+v``, ``ref+v``, ``kit+v``, ``%+v``)."""
    narrow = any("v_selected" in row for row in table.values())
    head = f"{'file':40} {'selected':>8} {'hub':>6} {'ref':>6} {'peftkit':>8} {'%':>6}"
    lines = [head + (f" {'sel+v':>6} {'ref+v':>6} {'kit+v':>6} {'%+v':>6}" if narrow else "")]
    total = dict.fromkeys(next(iter(table.values()), {}).keys() or _COUNTS, 0)
    for name, row in [*table.items(), ("TOTAL", total)]:
        if name != "TOTAL":
            for key in total:
                total[key] += row[key]
        line = f"{name:40} {row['selected']:8} {row['hub']:6} {row['ref']:6} {row['kit']:8} {_share(row):>6}"
        if narrow:
            line += f" {row['v_selected']:6} {row['v_ref']:6} {row['v_kit']:6} {_share(row, 'v_'):>6}"
        lines.append(line)
    return "\n".join(lines)


def failure_groups(
    reference: dict, peftkit: dict, limit: int = 40, only: list[str] | None = None
) -> list[tuple[int, str]]:
    """The commonest peftkit failure messages among tests that pass on the reference (numbers blanked), counting
    the tests in ``only`` when given."""
    counts: Counter[str] = Counter()
    wanted = set(reference if only is None else only)
    for nodeid, (outcome, _) in reference.items():
        if nodeid not in wanted:
            continue
        kit_outcome, message = peftkit.get(nodeid, ("not run", ""))
        if outcome == "passed" and kit_outcome != "passed":
            first = (message.splitlines() or [kit_outcome])[0]
            counts[re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?", "#", first)[:160]] += 1
    return [(n, m) for m, n in counts.most_common(limit)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    tests = fetch_tests(args.version, args.workdir)
    install_test_dependencies(args.workdir)
    if args.local_hub is not None:
        from peft_suite_hub import build_hub

        args.local_hub = args.local_hub.resolve()
        print("local hub: built", len(build_hub(args.local_hub)), "model ids in", args.local_hub)
    methods = in_scope_methods(args.peftkit_src)
    variants = declared_variants(args.peftkit_src)
    print("in-scope methods:", ", ".join(methods))
    print("LoRA variants peftkit implements:", ", ".join(variants))
    saved = args.workdir / "selection.json"
    decisions = (
        json.loads(saved.read_text())
        if (args.side == "report" or args.reuse_selection) and saved.exists()
        else select(args, tests, methods, variants)
    )
    sampled = [
        row
        for row in decisions
        if row.get("method_in_scope", row["in_scope"]) and zlib.crc32(row["nodeid"].encode()) % args.sample == 0
    ]
    selected = [row["nodeid"] for row in sampled]
    narrow = {row["nodeid"] for row in sampled if row["in_scope"]}
    print(
        f"collected {len(decisions)}, in scope by method {len(selected)}, "
        f"by method and LoRA variant {len(narrow)} (columns +v)"
    )
    if not selected:
        return 1
    results = {side: {} for side in ("reference", "peftkit")}
    for side in ("reference", "peftkit"):
        if args.side in ("both", side) and not args.rerun_failures:
            results[side] = run_side(args, tests, side, selected)
        else:
            results[side] = read_results(args.workdir / f"results-{side}.jsonl")
    if args.rerun_failures:
        results["peftkit"] = rerun_failures(args, tests, selected, results["reference"], results["peftkit"])
    table = tabulate(selected, results["reference"], results["peftkit"], narrow)
    print(render(table))
    print("\ncommonest peftkit failures among reference passes (in scope by method and LoRA variant):")
    for count, message in failure_groups(results["reference"], results["peftkit"], only=sorted(narrow)):
        print(f"{count:6}  {message}")
    (args.workdir / "summary.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
