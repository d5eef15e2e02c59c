"""The pack loads in a real ComfyUI server, and plain FLUX and SDXL text-to-image run on the tiny models."""

from __future__ import annotations

import asyncio

import pytest
from support import graphs

pytestmark = pytest.mark.server


def pack_node_ids() -> set[str]:
    from regional_layout import comfy_entrypoint

    extension = asyncio.run(comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return {node.GET_SCHEMA().node_id for node in nodes}


def test_every_node_is_registered(comfy_server):
    info = comfy_server.object_info()
    ours = pack_node_ids()
    assert ours, "the pack declares no nodes"
    missing = ours - set(info)
    assert not missing, f"nodes missing from /object_info: {sorted(missing)}"
    for node_id in ours:
        spec = info[node_id]
        assert spec["category"].startswith("regional_layout"), node_id
        assert node_id.startswith("RL_"), node_id
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        untipped = [name for name, spec in inputs.items() if not (spec[1] if len(spec) > 1 else {}).get("tooltip")]
        assert not untipped, f"{node_id} inputs without a tooltip: {untipped}"


def test_no_import_error_in_server_log(comfy_server):
    assert comfy_server.import_failures() == []
    assert "comfy_entrypoint" not in comfy_server.log_text(), comfy_server.log_tail()


def test_web_extension_is_served(comfy_server):
    scripts = comfy_server.get_json("/extensions")
    assert any(path.endswith("/regional_layout.js") for path in scripts), scripts


@pytest.mark.parametrize(
    "build, size",
    [
        (graphs.flux_text_to_image, (256, 192)),
        (graphs.sdxl_text_to_image, (192, 256)),
    ],
    ids=["flux", "sdxl"],
)
def test_plain_text_to_image(comfy_server, build, size):
    width, height = size
    result = comfy_server.run(build(width=width, height=height))
    assert result.status == "success", result.error
    images = comfy_server.images(result, "save")
    assert len(images) == 1
    assert images[0].size == (width, height)
