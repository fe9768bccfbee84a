"""examples/: every contact and stream response validates against ``schema --input`` and
decodes with the bridge's decoder; channel_backend.py runs as a script (``--once``) against
the real broker, a running bridge and the simulator's scripted agent."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from bridge.oscc import codec
from bridge.simulator import Simulator
from tests.bridge_harness import FB_TITLE, FB_TOKEN, config_toml, make_config, running_bridge
from tests.test_inputschema import problems

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONTACTS = ["contact.json", "contact-js-sample.json"]


@pytest.mark.parametrize("name", CONTACTS)
def test_example_contacts_are_accepted(name: str) -> None:
    data = (EXAMPLES / name).read_bytes()
    assert problems("<c>.contact.new", json.loads(data)) == []
    parsed = codec.decode_new_contact(data)
    assert parsed.obj.published_object.id


def test_the_two_contacts_are_the_two_spellings() -> None:
    tables = json.loads((EXAMPLES / "contact.json").read_text())
    sample = json.loads((EXAMPLES / "contact-js-sample.json").read_text())
    assert tables["type"] == "Post"
    assert sample["type"] == "POST"
    assert "dateTIme" in sample
    assert sample["isRealTimeHandling"] == "true"
    assert codec.decode_new_contact(json.dumps(tables)).body == tables | {
        "dateTime": codec.decode_new_contact(json.dumps(tables)).body["dateTime"]
    }


def test_example_stream_response_is_accepted() -> None:
    data = (EXAMPLES / "stream-response.json").read_bytes()
    assert problems("<c>.stream.response", json.loads(data)) == []
    assert len(codec.decode_stream_response(data).obj.ordered_items or ()) == 2


@pytest.mark.timeout(60)
async def test_channel_backend_runs_once(prefix: str, tmp_path: Path) -> None:
    async with Simulator({FB_TITLE: FB_TOKEN}, seed=3, step_delay=0.05) as sim:
        config = make_config(prefix, sim.url, tmp_path / "spool")
        path = tmp_path / "bridge.toml"
        path.write_text(config_toml(config))
        async with running_bridge(config):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(EXAMPLES / "channel_backend.py"),
                "--config", str(path), str(EXAMPLES / "contact.json"),
                "--once", "--timeout", "40",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 50)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "published contact post-2024-0001" in text
    assert "outcome: accepted" in text
    assert "event delivered" in text
    assert "agent reply to post-2024-0001" in text
    assert [c["publishedObject"]["id"] for c in sim.contacts(FB_TITLE)] == ["post-2024-0001"]
