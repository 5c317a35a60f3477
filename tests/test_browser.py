"""TensorBoard in a real browser: the page a newcomer opens after ``python -m experiments seed``.

The test reads the page Chromium rendered (the DOM after TensorBoard's JavaScript ran), not the
data API. It drives headless Chromium over ``--remote-debugging-pipe``: DevTools protocol messages
as JSON, each ended by a NUL byte, written to the browser's fd 3 and read from its fd 4, so no
client library is needed. It skips where no Chromium is installed, and fails there on CI.
"""

import base64
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.__main__ import main

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
IMAGE_TAG = "per_sample/seed/W2_gradient_contributions"

# The Time Series card of loss/seed: its chart's size, and the rows of the data table under it, one per run drawn.
LOSS_CHART = """(() => {
  const title = document.querySelector('scalar-card tb-truncated-path[title="loss/seed"]');
  const card = title && title.closest("scalar-card");
  const rows = card ? [...card.querySelectorAll("tb-data-table-content-row")] : [];
  if (rows.length < 2) return null;
  const chart = card.querySelector("line-chart").getBoundingClientRect();
  const text = row => row.textContent.replace(/\\s+/g, " ").trim();
  return {width: chart.width, height: chart.height, rows: rows.map(text)};
})()"""

# The heat map's card, once its image has loaded. Time Series opens only its first two groups,
# so the per_sample group is opened as a reader would, by clicking its bar while it is collapsed.
HEAT_MAP = """(() => {
  const title = document.querySelector('image-card tb-truncated-path[title="IMAGE_TAG"]');
  if (!title) {
    const group = document.querySelector('metrics-card-group-toolbar [title="per_sample"]');
    const bar = group && group.closest("button");
    if (bar && bar.querySelector('mat-icon[svgicon^="expand_more"]')) bar.click();
    return null;
  }
  const card = title.closest("image-card");
  card.scrollIntoView();  // cards render when they come into view
  const image = card.querySelector("img");
  if (!image || !image.complete || image.naturalWidth === 0) return null;
  return {width: image.naturalWidth, height: image.naturalHeight, card: card.textContent.replace(/\\s+/g, " ")};
})()""".replace("IMAGE_TAG", IMAGE_TAG)


# The y axis of the Time Series card of match/seed, once both its runs are drawn: the tick labels.
MATCH_CHART = """(() => {
  const title = document.querySelector('scalar-card tb-truncated-path[title="match/seed"]');
  const card = title && title.closest("scalar-card");
  if (!card || card.querySelectorAll("tb-data-table-content-row").length < 2) return null;
  const axis = card.querySelector('line-chart-axis[axis="y"]');
  const ticks = axis ? [...axis.querySelectorAll("text")].map(t => t.textContent.trim()).filter(Boolean) : [];
  const text = row => row.textContent.replace(/\\s+/g, " ").trim();
  return ticks.length ? {ticks, rows: [...card.querySelectorAll("tb-data-table-content-row")].map(text)} : null;
})()"""

# The HParams tab's table (a vaadin-grid inside shadow roots): its column headings, its rows, and whether it
# is wider than the space it has.
HPARAMS_TABLE = """(() => {
  const found = [];
  const walk = root => root.querySelectorAll("*").forEach(e => {
    if (e.shadowRoot) walk(e.shadowRoot);
    if (e.tagName === "VAADIN-GRID") found.push(e);
  });
  walk(document);
  const grid = found.find(g => g.offsetWidth > 0);
  if (!grid) return null;
  const cells = [];
  const collect = root => root.querySelectorAll("*").forEach(e => {
    if (e.shadowRoot) collect(e.shadowRoot);
    if (e.classList && e.classList.contains("table-header")) cells.push(e.textContent.replace(/\\s+/g, " ").trim());
  });
  collect(grid);
  const table = grid.shadowRoot && grid.shadowRoot.querySelector("table");
  const text = (grid.textContent || "").replace(/\\s+/g, " ");
  if (!cells.length || !text.includes("MATCH")) return null;
  return {headings: cells, width: table ? table.scrollWidth : 0, room: grid.clientWidth, text};
})()"""


def chromium_binary() -> str:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    reason = f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); on Debian: apt-get install chromium"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI installs it (.ci/run) and must not skip this test")
    pytest.skip(reason)


@contextlib.contextmanager
def process_group(command: list[str], **popen_args):
    """A process in a group of its own; the whole group (a browser's helpers too) ends on exit."""
    process = subprocess.Popen(command, start_new_session=True, **popen_args)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # any helper that outlived the leader
            process.wait()


class DevTools:
    """The DevTools protocol over Chromium's debugging pipe: one command at a time, events ignored."""

    def __init__(self, commands: int, replies: int):
        self.commands, self.replies, self.buffer, self.last_id, self.session = commands, replies, b"", 0, None

    def send(self, method: str, timeout: float = 30, **params):
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buffer:
                if not select.select([self.replies], [], [], max(deadline - time.monotonic(), 0))[0]:
                    raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
                chunk = os.read(self.replies, 1 << 16)
                if not chunk:
                    raise ConnectionError("Chromium closed its debugging pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.navigate", url=url)

    def wait_for(self, what: str, expression: str, screenshot: Path, timeout: float = 30):
        """The value of ``expression`` once it is not null; on timeout, fail with a screenshot of the page."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in result:
                raise RuntimeError(f"the page's script failed: {result['exceptionDetails']}")
            if result["result"].get("value") is not None:
                return result["result"]["value"]
            time.sleep(0.25)
        screenshot.write_bytes(base64.b64decode(self.send("Page.captureScreenshot")["data"]))
        pytest.fail(f"the page showed no {what} within {timeout} s; it looked like {screenshot}")


@contextlib.contextmanager
def tensorboard(logdir: Path, output: Path):
    """A TensorBoard server on a free port of 127.0.0.1; yields its address."""
    with (
        output.open("w") as sink,
        process_group(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        ) as server,
    ):
        deadline = time.monotonic() + 60
        while not (found := re.search(r"http://127\.0\.0\.1:\d+/", output.read_text())):
            assert server.poll() is None and time.monotonic() < deadline, (
                f"TensorBoard did not start:\n{output.read_text()}"
            )
            time.sleep(0.2)
        yield found.group(0)


# Chromium reads DevTools commands from its fd 3 and writes the replies to its fd 4: this puts the
# two pipe ends given as arguments there (copied out of the way first, lest one of them be 3 or 4).
AS_FDS_3_AND_4 = (
    "import fcntl, os, sys\n"
    "commands, replies = (fcntl.fcntl(int(fd), fcntl.F_DUPFD_CLOEXEC, 10) for fd in sys.argv[1:3])\n"
    "os.dup2(commands, 3)\n"
    "os.dup2(replies, 4)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


@contextlib.contextmanager
def headless_chromium(binary: str, profile: Path):
    """Headless Chromium, driven through its debugging pipe."""
    commands_read, commands = os.pipe()
    replies, replies_write = os.pipe()
    child_ends = (commands_read, replies_write)
    command = [
        sys.executable,
        "-c",
        AS_FDS_3_AND_4,
        str(commands_read),
        str(replies_write),
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        "--window-size=1400,1800",
        "--hide-scrollbars",
        "about:blank",
    ]
    try:
        with process_group(command, pass_fds=child_ends, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            for fd in child_ends:
                os.close(fd)  # held by Chromium alone, so its exit reads as the pipe's end
            child_ends = ()
            yield DevTools(commands, replies)
    finally:
        for fd in (commands, replies, *child_ends):
            os.close(fd)


def test_tensorboard_shows_seeds_loss_chart_with_both_runs_and_its_heat_map_in_a_browser(tmp_path):
    binary = chromium_binary()
    logdir = tmp_path / "runs"
    assert main(["seed", "--logdir", str(logdir)]) == 0  # as the README runs it: no setting changed (about 1 s)
    (run_dir,) = (logdir / "seed").iterdir()
    run = run_dir.relative_to(logdir).as_posix()  # seed/<run-id>, as TensorBoard names it

    with (
        tensorboard(logdir, tmp_path / "tensorboard.log") as address,
        headless_chromium(binary, tmp_path / "profile") as page,
    ):
        page.open(address + "#timeseries")  # the tab TensorBoard opens on
        loss_chart = page.wait_for("loss/seed chart with two runs", LOSS_CHART, tmp_path / "loss_chart.png")
        match_chart = page.wait_for("match chart under its limit", MATCH_CHART, tmp_path / "match_chart.png")
        heat_map = page.wait_for("loaded heat map", HEAT_MAP, tmp_path / "heat_map.png")
        page.send("Page.navigate", url=address + "#hparams")
        hparams = page.wait_for("HParams table", HPARAMS_TABLE, tmp_path / "hparams.png")

    assert loss_chart["width"] > 100 and loss_chart["height"] > 100
    runs_on_chart = sorted(word for row in loss_chart["rows"] for word in row.split() if word.startswith(f"{run}/"))
    assert runs_on_chart == [f"{run}/autograd", f"{run}/hand"], loss_chart["rows"]
    assert heat_map["width"] > 0 and heat_map["height"] > 0
    assert f"{run}/hand" in heat_map["card"]
    # The error chart's scale runs from 0 to the limit: the tolerance run's line at 1 sets it, whatever the errors.
    ticks = [float(tick) for tick in match_chart["ticks"]]
    assert min(ticks) == 0 and max(ticks) == 1, match_chart
    runs_on_match = sorted(word for row in match_chart["rows"] for word in row.split() if word.startswith(f"{run}/"))
    assert runs_on_match == [f"{run}/hand", f"{run}/tolerance"], match_chart["rows"]
    # HParams: one shared set of columns, the verdict among them (a setting changed on the command line would
    # add its own), the whole table in the room it has.
    assert hparams["headings"] == [
        "Trial ID",
        "Show Metrics",
        "experiment",
        "verdict",
        "final loss",
        "error / tolerance",
        "metric",
    ], hparams["headings"]
    assert hparams["width"] <= hparams["room"], hparams
    assert run_dir.name in hparams["text"] and "seed" in hparams["text"]
