"""The small helpers the nodes share: the KSampler inputs and the node-name prefix on errors."""

from __future__ import annotations

import pytest
from regional_layout.nodes.checks import prefix_errors
from regional_layout.nodes.guided_sampler import BackwardGuidanceKSampler
from regional_layout.nodes.latent_inversion import LatentInversion


def test_prefix_errors_names_the_node_and_lets_other_errors_through():
    with pytest.raises(ValueError, match=r"^Node: boxes: bad box$") as caught, prefix_errors("Node"):
        with prefix_errors("boxes"):
            raise ValueError("bad box")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    class Mismatch(ValueError):
        pass

    with pytest.raises(ValueError, match="^other$"), prefix_errors("Node", Mismatch):
        raise ValueError("other")  # only the named kinds get the prefix
    with pytest.raises(ValueError, match="^Node: mismatch$"), prefix_errors("Node", Mismatch):
        raise Mismatch("mismatch")
    with pytest.raises(KeyError), prefix_errors("Node"):
        raise KeyError("not a ValueError")


def test_inversion_and_guided_sampler_share_the_fraction_and_schedule_inputs():
    def inputs(node):
        return {i.id: i.as_dict() for i in node.GET_SCHEMA().inputs}

    sampler, inversion = inputs(BackwardGuidanceKSampler), inputs(LatentInversion)
    for name in ("guidance_fraction", "steps", "scheduler"):
        assert {k: v for k, v in sampler[name].items() if k != "tooltip"} == \
            {k: v for k, v in inversion[name].items() if k != "tooltip"}, name
