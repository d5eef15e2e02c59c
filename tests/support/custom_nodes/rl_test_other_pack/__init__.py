"""A stand-in for another node pack, loaded next to ours by tests/test_other_packs.py: it patches a model the
way other packs do (a model_function_wrapper and a FLUX double-block replacement), each with a visible effect."""


class OtherPackPatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "output_scale": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 2.0, "step": 0.01}),
                "block_scale": ("FLOAT", {"default": 1.05, "min": 0.0, "max": 2.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, output_scale, block_scale):
        patched = model.clone()

        def unet_wrapper(apply_model, args):
            return apply_model(args["input"], args["timestep"], **args["c"]) * output_scale

        def double_block_0(args, extra):
            out = extra["original_block"](args)
            return {"img": out["img"] * block_scale, "txt": out["txt"]}

        patched.set_model_unet_function_wrapper(unet_wrapper)
        patched.set_model_patch_replace(double_block_0, "dit", "double_block", 0)
        return (patched,)


NODE_CLASS_MAPPINGS = {"RLTest_OtherPackPatch": OtherPackPatch}


def _attention(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False, **kwargs):
    """Plain scaled-dot-product attention in ComfyUI's calling convention (what a Sage/Flash patch computes)."""
    import torch

    if not skip_reshape:
        b, n, _ = q.shape
        q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[-1])


def replacing_override(scale):
    """An `optimized_attention_override` that replaces ComfyUI's attention instead of calling `func` (as
    KJNodes' Sage/Flash patch nodes do); `scale` makes its use visible in the image."""

    def override(func, q, k, v, heads, *args, **kwargs):
        return _attention(q, k, v, heads, *args, **kwargs) * scale

    return override


class AttentionOverridePatch:
    """Sets model_options' transformer_options["optimized_attention_override"] (KJNodes' way)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "scale": ("FLOAT", {"default": 0.98, "min": 0.0, "max": 2.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, scale):
        patched = model.clone()
        options = dict(patched.model_options.get("transformer_options", {}))
        options["optimized_attention_override"] = replacing_override(scale)
        patched.model_options["transformer_options"] = options
        return (patched,)


class AttentionOverrideWrapper:
    """Puts its override into each call's transformer_options from a DIFFUSION_MODEL wrapper, replacing any
    override already there instead of chaining it."""

    @classmethod
    def INPUT_TYPES(cls):
        return AttentionOverridePatch.INPUT_TYPES()

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, scale):
        import comfy.patcher_extension

        override = replacing_override(scale)

        def wrapper(executor, *args, **kwargs):  # (x, timestep, ..., transformer_options)
            if args and isinstance(args[-1], dict):
                args = (*args[:-1], dict(args[-1], optimized_attention_override=override))
            elif isinstance(kwargs.get("transformer_options"), dict):
                kwargs["transformer_options"] = dict(
                    kwargs["transformer_options"], optimized_attention_override=override
                )
            return executor(*args, **kwargs)

        patched = model.clone()
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "rl_test_attention", wrapper)
        return (patched,)


class ForwardReplacingCache:
    """TeaCache's mechanism: while the model runs, FLUX's `forward_orig` is swapped for the pack's own forward,
    which does not hand transformer_options (with the attention override) on to the blocks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model):
        patched = model.clone()
        diffusion_model = patched.get_model_object("diffusion_model")
        original = diffusion_model.forward_orig

        def own_forward(*args, **kwargs):
            strip = lambda o: {k: v for k, v in o.items() if k != "optimized_attention_override"}  # noqa: E731
            args = [strip(a) if isinstance(a, dict) else a for a in args]
            kwargs = {k: strip(v) if k == "transformer_options" else v for k, v in kwargs.items()}
            return original(*args, **kwargs)

        def unet_wrapper(apply_model, args):
            # swapped on the model for the call, as TeaCache does (this stand-in pack's own behaviour)
            had_own = "forward_orig" in vars(diffusion_model)
            diffusion_model.forward_orig = own_forward
            try:
                return apply_model(args["input"], args["timestep"], **args["c"])
            finally:
                if had_own:
                    diffusion_model.forward_orig = original
                else:
                    del diffusion_model.forward_orig  # the class's method shows through again

        patched.set_model_unet_function_wrapper(unet_wrapper)
        return (patched,)


NODE_CLASS_MAPPINGS.update(
    {
        "RLTest_AttentionOverridePatch": AttentionOverridePatch,
        "RLTest_AttentionOverrideWrapper": AttentionOverrideWrapper,
        "RLTest_ForwardReplacingCache": ForwardReplacingCache,
    }
)
