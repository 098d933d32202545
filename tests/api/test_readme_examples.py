"""The README's curl examples run exactly as written (only the port is the test server's)."""

import re
import subprocess
from pathlib import Path

import pytest
from live_server import LiveServer

from api.settings import env_name, flag_name, options

README = Path(__file__).parents[2] / "README.md"
README_URL = "http://127.0.0.1:8081"


def curl_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [block for block in blocks if "curl " in block]


def test_readme_has_curl_examples():
    assert len(curl_blocks()) >= 4
    assert all(README_URL in block for block in curl_blocks())


@pytest.mark.parametrize("block", curl_blocks(), ids=lambda b: b.split("\n")[0][:60])
def test_curl_example_runs(server: LiveServer, block: str):
    script = block.replace(README_URL, server.base_url)
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert '"error"' not in result.stdout


def test_python_examples_run(server: LiveServer, capsys: pytest.CaptureFixture):
    """The SDK examples, in order, in one namespace (later ones use the client made earlier)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace(README_URL, server.base_url), "README.md", "exec"), namespace)
    assert "Paris" in capsys.readouterr().out


def test_readme_lists_every_flag_and_its_environment_variable():
    text = README.read_text()
    for option in options():
        assert f"`{flag_name(option.name)}`" in text
        assert f"`{env_name(option.name)}`" in text
