"""Regional Layout: compose images region by region (Regional Prompting FLUX, LSReGen)."""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    # Imported here so the maths modules can be imported (and tested) without loading any nodes.
    from .nodes import RegionalLayoutExtension

    return RegionalLayoutExtension()
