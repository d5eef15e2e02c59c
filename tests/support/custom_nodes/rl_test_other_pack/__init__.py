"""A stand-in for another node pack, loaded next to ours by tests/test_other_packs.py: it patches a model the
way other packs do (a model_function_wrapper and a FLUX double-block replacement), each with a visible effect."""


class OtherPackPatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",),
                             "output_scale": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 2.0, "step": 0.01}),
                             "block_scale": ("FLOAT", {"default": 1.05, "min": 0.0, "max": 2.0, "step": 0.01})}}

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
