"""The README's commands and examples are the ones that work."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def first_commands():
    lines = [line.split("#")[0].strip() for line in code_blocks("bash")[0].splitlines()]
    return [line for line in lines if line]


def test_readme_begins_with_the_main_job_and_the_test_command():
    assert README.index("```bash") < README.index("\n## ")
    run, test = first_commands()
    assert run.startswith("pip install") and run.endswith("python -m experiments")
    assert test.startswith("pip install") and test.endswith("python -m pytest")


def test_ci_runs_the_readmes_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert first_commands()[1] in ci_lines


@pytest.mark.parametrize("index", range(len(code_blocks("python"))))
def test_python_example_runs(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that logs writes its runs/ here
    exec(compile(code_blocks("python")[index], f"README.md python block {index}", "exec"), {})
    printed = capsys.readouterr().out
    assert "MISMATCH" not in printed


def test_ten_line_example_prints_the_report_the_readme_shows(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(code_blocks("python")[0], {})
    assert capsys.readouterr().out == code_blocks("text")[0]


def verify_example():
    return next(block for block in code_blocks("python") if "torchbp.verify(Swish.apply" in block)


def verify_table():
    return next(block for block in code_blocks("text") if block.startswith("verify(Swish.apply)"))


def test_the_verify_example_prints_the_statuses_the_readme_shows(capsys, tmp_path, monkeypatch):
    """Property by property; the measured figures vary with the machine's arithmetic, the statuses must not."""
    monkeypatch.chdir(tmp_path)
    exec(compile(verify_example(), "README.md verify example", "exec"), {})
    printed = capsys.readouterr().out

    def statuses(table):
        lines = table.splitlines()
        rows = [re.split(r"\s{2,}", line)[:2] for line in lines[3:] if not line.startswith(" ")]  # name, status
        return lines[:2], rows

    assert statuses(printed) == statuses(verify_table())


def test_the_readme_names_every_property_of_verify():
    import torchbp

    section = README[README.index("## Verify your own Function"):README.index("## Per-sample gradients")]
    for name in torchbp.VERIFY_PROPERTIES:
        assert f"`{name}`" in section
