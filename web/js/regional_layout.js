// Entry point of the pack's frontend extension (the region editor registers itself in its own file).
const { app } = window.comfyAPI.app;

app.registerExtension({ name: "RegionalLayout.Core" });
