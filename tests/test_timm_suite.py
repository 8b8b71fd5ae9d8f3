"""timm's OWN model tests (``tests/test_models.py`` of the installed timm version) run on rmt_*.

Not vendored: the timm sdist matching ``timm.__version__`` is fetched with pip into a cache folder
(``$SEGRET_ZOO_CACHE`` or ``~/.cache/segret-zoo``, then ``timm-sdist/``), its ``tests/`` extracted,
and ``pytest tests/test_models.py -k "rmt_ and not pretrained"`` run in a subprocess with a small
plugin that registers rmt_* and adds the ``rmt`` module to the module list timm's file reserves for
models with ``forward_intermediates`` (so those tests cover RMT too).

Slow (about two minutes on two cores). Without the sdist (no network) it is skipped, except under
``CI=true``, where it fails.
"""
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

pytestmark = pytest.mark.slow  # the timm suite: `pytest -m slow tests/test_timm_suite.py`

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("rmt_t", "rmt_s", "rmt_b", "rmt_l")
# the tests of timm 1.0.x's test_models.py that select rmt_* (the module-list ones through the plugin)
EXPECTED_TESTS = {
    "test_model_forward", "test_model_backward", "test_model_default_cfgs", "test_model_forward_torchscript",
    "test_model_forward_features", "test_model_forward_intermediates_features", "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract", "test_model_forward_fx", "test_model_backward_fx",
    "test_model_forward_fx_torchscript",
}

PLUGIN = '''"""pytest plugin for timm's test_models.py: rmt_* registered and in its module lists."""
import timm

import segret_zoo.models  # noqa: F401  (registers rmt_* with timm)

_list_models = timm.list_models


def list_models(*args, **kwargs):
    # test_models.py selects the models with forward_intermediates() by a list of module names
    # (FEAT_INTER_FILTERS, the only list of several modules it passes); rmt is one of them
    module = kwargs.get("module")
    if not isinstance(module, str) and module is not None and len(module) > 1 and "rmt" not in module:
        kwargs["module"] = [*module, "rmt"]
    return _list_models(*args, **kwargs)


timm.list_models = list_models  # test_models.py binds `from timm import list_models` at import
'''


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"timm's test suite is required in CI: {reason}")
    pytest.skip(reason)


def _cache_dir() -> Path:
    base = os.environ.get("SEGRET_ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "segret-zoo")
    return Path(base) / "timm-sdist"


def _timm_tests(version: str) -> Path:
    """``<cache>/timm-<version>/tests``, downloading and extracting the sdist when not cached."""
    cache = _cache_dir()
    tests = cache / f"timm-{version}" / "tests"
    if (tests / "test_models.py").is_file():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"timm-{version}.tar.gz"
    if not sdist.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"timm=={version}", "-d", str(cache), "-q"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            _unavailable(f"`{' '.join(cmd)}` did not finish in 240 s")
        if run.returncode != 0 or not sdist.is_file():
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            _unavailable(f"cannot download the timm {version} sdist ({tail[0]})")
    prefix = f"timm-{version}/tests/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(cache, members=members, filter="data")
        else:  # Python < 3.11.4: names already restricted to the tests/ folder
            tar.extractall(cache, members=members)
    if not (tests / "test_models.py").is_file():
        _unavailable(f"the timm {version} sdist has no tests/test_models.py")
    return tests


def test_timm_own_model_tests_pass_for_rmt(tmp_path):
    tests = _timm_tests(timm.__version__)
    (tmp_path / "segret_timm_plugin.py").write_text(PLUGIN)
    report = tmp_path / "report.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("GITHUB_ACTIONS", None)  # its exclusions target timm's runners, not these small models
    cmd = [sys.executable, "-m", "pytest", str(tests / "test_models.py"), "-k", "rmt_ and not pretrained",
           "-p", "segret_timm_plugin", "-p", "no:cacheprovider", "-q", "-W", "ignore::pytest.PytestUnknownMarkWarning",
           f"--junitxml={report}"]
    # ~2 minutes on two idle cores; the limit leaves room for a machine shared with other jobs
    run = subprocess.run(cmd, cwd=tests.parent, env=env, capture_output=True, text=True, timeout=1200)
    assert report.is_file(), f"timm's suite did not run:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        status = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        outcomes[case.get("name")] = status
    ran = sorted(outcomes)
    print(f"timm {timm.__version__} tests/test_models.py on rmt_*: {len(ran)} tests")
    for name in ran:
        print(f"  {outcomes[name]:7s} {name}")
    bad = {n: s for n, s in outcomes.items() if s in ("failure", "error")}
    assert not bad, f"timm's own tests fail for rmt_*: {sorted(bad)}\n{run.stdout[-4000:]}"
    assert run.returncode == 0, run.stdout[-4000:]
    functions = {n.split("[", 1)[0] for n in ran}
    assert functions >= EXPECTED_TESTS, f"not selected: {sorted(EXPECTED_TESTS - functions)}"
    for variant in VARIANTS:
        assert all(any(f"{variant}]" in n and n.startswith(f"{t}[") for n in ran) for t in EXPECTED_TESTS), variant
