"""The README is the front door: it begins with the two commands a new user runs, CI runs its test command
(then the subset on the newest torch it names), and it links every page of the documentation. (Its code
examples run in tests/test_docs.py.)"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def first_commands():
    block = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)[0]
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def test_readme_begins_with_the_main_job_and_the_test_command():
    assert README.index("```bash") < README.index("\n## ")
    run, test = first_commands()
    assert run.startswith("pip install") and run.endswith("python -m experiments")
    assert test.startswith("pip install") and test.endswith("python -m pytest")


def test_ci_runs_the_readmes_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert first_commands()[1] in ci_lines


def test_ci_runs_the_subset_on_the_newest_torch_that_the_readme_names():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "bash .ci/newest-torch" in ci_lines and "`bash .ci/newest-torch`" in README
    assert ci_lines.index("bash .ci/newest-torch") > ci_lines.index(first_commands()[1])  # after the whole suite


def test_the_readme_is_a_short_front_door():
    assert len(README.encode()) <= 12_000


def test_the_readme_links_every_page_of_the_documentation_and_its_picture_exists():
    for page in ["layers", "lockstep", "verify", "per-sample", "benchmark", "derivation", "contributing"]:
        assert f"(docs/{page}.md)" in README
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures and all((ROOT / picture).is_file() for picture in pictures)
