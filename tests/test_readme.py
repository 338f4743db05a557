"""The README stays true: its API sketch runs, and its first lines are the two set-up commands
that .ci/run uses."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_api_sketch_runs():
    code = README.split("```python\n", 1)[1].split("```", 1)[0]
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["J"].shape == ns["I"].shape
    assert ns["W"].shape == (1, 1, 64, 64)
    assert ns["a"].grad is not None


def test_first_lines_are_the_setup_commands_and_ci_runs_the_test_one():
    lines = [ln.strip() for ln in README.splitlines()[1:6] if ln.strip()]
    main_job, tests = lines[0].split("#")[0].strip(), lines[1].split("#")[0].strip()
    assert main_job.startswith("bash scripts/setup.sh") and "fastdehaze demo" in main_job
    assert tests.startswith("bash scripts/setup.sh") and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()
