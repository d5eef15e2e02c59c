"""Checks on the shipped workflows (workflows/*.json and their API twins in workflows/api/)."""

from __future__ import annotations


def check_ui_matches_api(info: dict, ui: dict, api: dict) -> None:
    """A UI-format workflow holds the same nodes, links and widget values as its API twin, in the widget order
    ComfyUI's /object_info (`info`) gives."""
    assert {str(n["id"]) for n in ui["nodes"]} == set(api)
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        twin = api[str(node["id"])]
        assert node["type"] == twin["class_type"]
        spec = info[node["type"]]["input"]
        order = info[node["type"]]["input_order"]
        specs = {**spec.get("required", {}), **spec.get("optional", {})}
        values = list(node["widgets_values"])
        linked = {i["name"]: links[i["link"]] for i in node["inputs"] if i.get("link") is not None}
        for name in order.get("required", []) + order.get("optional", []):
            if name in linked:
                _, src, slot, dst, _, _ = linked[name]
                assert twin["inputs"][name] == [str(src), slot] and dst == node["id"]
            elif name in twin["inputs"]:
                assert values.pop(0) == twin["inputs"][name], (node["type"], name)
                if len(specs[name]) > 1 and specs[name][1].get("control_after_generate"):
                    values.pop(0)
        assert not values, (node["type"], values)
