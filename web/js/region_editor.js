// Region editor for RL_RegionLayout: a canvas DOM widget whose state lives in the node's hidden
// `editor_state` STRING input (versioned JSON), so saved workflows and API prompts carry the layout.
import { RegionEditorModel, dragRect, paintRegion, rectFromCorners } from "./region_editor_model.js";

const { app } = window.comfyAPI.app;
const { api } = window.comfyAPI.api;

const NODE_ID = "RL_RegionLayout";
const STATE_INPUT = "editor_state";
const MIN_HEIGHT = 420;
const HANDLE_PX = 7;
const FILL_ALPHA = 0.45;

function chainCallback(object, property, callback) {
  const original = object[property];
  object[property] = function (...args) {
    const result = original?.apply(this, args);
    callback.apply(this, args);
    return result;
  };
}

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function button(text, title, onClick, className = "") {
  const b = el("button", { textContent: text, title, className: `rl-btn ${className}`, type: "button" });
  b.addEventListener("click", (e) => {
    e.stopPropagation();
    onClick();
  });
  return b;
}

const STYLE = `
.rl-editor { display: flex; flex-direction: column; gap: 4px; width: 100%; height: 100%; box-sizing: border-box;
  font: 12px sans-serif; color: var(--input-text, #ddd); }
.rl-toolbar { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; }
.rl-btn { background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd); border: 1px solid
  var(--border-color, #555); border-radius: 4px; padding: 2px 6px; cursor: pointer; font-size: 12px; }
.rl-btn.rl-active { outline: 2px solid #4a9eff; }
.rl-stage { flex: 1 1 auto; min-height: 120px; display: flex; align-items: center; justify-content: center;
  overflow: hidden; }
.rl-canvas { touch-action: none; cursor: crosshair; outline: 1px solid var(--border-color, #555); }
.rl-list { flex: 0 0 auto; max-height: 40%; overflow-y: auto; display: flex; flex-direction: column; gap: 2px; }
.rl-row { display: grid; grid-template-columns: 22px 70px 1fr 40px auto; gap: 3px; align-items: center;
  padding: 2px; border: 1px solid transparent; border-radius: 4px; }
.rl-row.rl-selected { border-color: #4a9eff; }
.rl-row input, .rl-row textarea { background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #555); border-radius: 3px; font-size: 12px; min-width: 0; }
.rl-row textarea { resize: vertical; height: 20px; }
.rl-row input[type=color] { width: 22px; height: 20px; padding: 0; }
.rl-row .rl-btn { padding: 1px 4px; }
`;

class RegionEditor {
  constructor(node) {
    this.node = node;
    this.stateWidget = node.widgets.find((w) => w.name === STATE_INPUT);
    this.tool = "rect";
    this.brush = 0.05; // diameter, fraction of the picture width
    this.drag = null;
    this.maskImages = new Map();
    this.model = new RegionEditorModel(() => this.#changed());
    this.#hideStateWidget();
    this.#build();
    this.syncFromWidget(true);
  }

  #hideStateWidget() {
    const w = this.stateWidget;
    w.hidden = true;
    w.options = { ...w.options, hidden: true };
    w.computeSize = () => [0, -4];
    // Setting the value from outside (paste, API, graph undo) re-renders the editor.
    chainCallback(w, "callback", () => this.syncFromWidget());
  }

  #build() {
    if (!document.getElementById("rl-editor-style")) {
      document.head.append(el("style", { id: "rl-editor-style", textContent: STYLE }));
    }
    this.canvas = el("canvas", { className: "rl-canvas" });
    this.stage = el("div", { className: "rl-stage" }, [this.canvas]);
    this.list = el("div", { className: "rl-list" });
    this.toolButtons = {};
    const tools = [["rect", "▭ Rect", "Draw rectangles; drag a rectangle to move it, its corners to resize"],
      ["brush", "✎ Brush", "Paint the selected region freehand"], ["erase", "⌫ Eraser", "Erase from the selected region"]];
    const toolbar = el("div", { className: "rl-toolbar" });
    for (const [tool, label, title] of tools) {
      this.toolButtons[tool] = button(label, title, () => this.setTool(tool), `rl-tool-${tool}`);
      toolbar.append(this.toolButtons[tool]);
    }
    this.brushInput = el("input", { type: "range", min: "1", max: "30", value: "5", title: "Brush size (% of width)",
      className: "rl-brush-size" });
    this.brushInput.addEventListener("input", () => (this.brush = Number(this.brushInput.value) / 100));
    toolbar.append(this.brushInput,
      button("↶", "Undo", () => this.model.undo(), "rl-undo"),
      button("↷", "Redo", () => this.model.redo(), "rl-redo"),
      button("+ Region", "Add a region", () => this.model.addRegion(), "rl-add"),
      button("Clear", "Clear the selected region's drawing", () => this.model.region &&
        this.model.clearRegion(this.model.selected), "rl-clear"));
    this.root = el("div", { className: "rl-editor" }, [toolbar, this.stage, this.list]);
    for (const type of ["pointerdown", "wheel", "keydown"]) this.root.addEventListener(type, (e) => e.stopPropagation());
    this.canvas.addEventListener("pointerdown", (e) => this.#pointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.#pointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.#pointerUp(e));
    this.canvas.addEventListener("pointercancel", (e) => this.#pointerUp(e));
    new ResizeObserver(() => this.render()).observe(this.stage);
    this.setTool("rect");

    this.widget = this.node.addDOMWidget("region_editor", "region_editor", this.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => MIN_HEIGHT,
      getValue: () => this.stateWidget.value,
      setValue: () => {},
      onDraw: () => this.#onGraphDraw(),
    });
    this.widget.serialize = false; // the state travels in editor_state; widgets_values stays positional
  }

  /** Show a picture (the node's `backdrop` input, after a run) behind the regions; display only. */
  setBackdrop(saved) {
    if (!saved?.filename) return;
    const query = new URLSearchParams({ filename: saved.filename, subfolder: saved.subfolder ?? "",
      type: saved.type ?? "temp" });
    const image = new Image();
    image.onload = () => {
      this.backdrop = image;
      this.render();
    };
    image.src = api.apiURL(`/view?${query}`);
  }

  setTool(tool) {
    this.tool = tool;
    for (const [name, b] of Object.entries(this.toolButtons)) b.classList.toggle("rl-active", name === tool);
  }

  #widgetNumber(name, fallback) {
    return Number(this.node.widgets.find((w) => w.name === name)?.value) || fallback;
  }

  get pictureWidth() {
    return this.#widgetNumber("width", 1024);
  }

  /** Picture aspect from the width/height widgets. */
  get aspect() {
    return this.pictureWidth / this.#widgetNumber("height", 1024);
  }

  #onGraphDraw() {
    // Cheap checks on every graph frame: the state or the aspect changed from outside the editor.
    this.syncFromWidget();
    if (this.aspect !== this.lastAspect) this.render();
  }

  syncFromWidget(force = false) {
    const text = this.stateWidget.value;
    if (!force && text === this.written) return;
    this.written = text;
    this.model.load(text);
    this.#renderList();
    this.render();
  }

  #changed() {
    this.written = this.model.serialize();
    this.stateWidget.value = this.written;
    this.node.setDirtyCanvas?.(true, true);
    // Let the workflow's change tracker record the edit (graph undo, unsaved marker, persistence).
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
    this.#renderList();
    this.render();
  }

  #point(e) {
    const r = this.canvas.getBoundingClientRect();
    return [(e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height];
  }

  #pointerDown(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    if (!this.model.region) this.model.addRegion();
    this.canvas.setPointerCapture?.(e.pointerId);
    const [x, y] = this.#point(e);
    const before = this.model.serialize();
    const shapes = this.model.region.shapes;
    if (this.tool === "rect") {
      const r = this.canvas.getBoundingClientRect();
      const hit = this.model.hitRect(x, y, HANDLE_PX / r.width, HANDLE_PX / r.height);
      if (hit) {
        this.drag = { kind: "edit", before, x, y, index: hit.index, handle: hit.handle, start: shapes[hit.index] };
      } else {
        shapes.push(rectFromCorners(x, y, x, y));
        this.drag = { kind: "new", before, x, y, index: shapes.length - 1 };
      }
    } else {
      shapes.push({ type: "stroke", points: [[x, y]], size: this.brush, erase: this.tool === "erase" });
      this.drag = { kind: "stroke", before, index: shapes.length - 1 };
    }
    this.render();
  }

  #pointerMove(e) {
    if (!this.drag || !this.model.region) return;
    const [x, y] = this.#point(e);
    const shapes = this.model.region.shapes;
    const d = this.drag;
    if (d.kind === "new") shapes[d.index] = rectFromCorners(d.x, d.y, x, y);
    else if (d.kind === "edit") shapes[d.index] = dragRect(d.start, d.handle, x - d.x, y - d.y);
    else {
      const points = shapes[d.index].points;
      const [px, py] = points[points.length - 1];
      const r = this.canvas.getBoundingClientRect();
      if (Math.hypot((x - px) * r.width, (y - py) * r.height) >= 2) points.push([x, y]);
    }
    this.render();
  }

  #pointerUp() {
    const d = this.drag;
    if (!d) return;
    this.drag = null;
    const shapes = this.model.region?.shapes ?? [];
    const shape = shapes[d.index];
    const r = this.canvas.getBoundingClientRect();
    if (d.kind === "new" && (shape.w * r.width < 3 || shape.h * r.height < 3)) shapes.splice(d.index, 1);
    if (shape?.points) shape.points = shape.points.map(([x, y]) => [+x.toFixed(5), +y.toFixed(5)]);
    this.model.commit(d.before);
    this.render();
  }

  /** Fit the canvas to the stage at the picture's aspect ratio and draw every visible region. */
  render() {
    const aspect = (this.lastAspect = this.aspect);
    const sw = this.stage.clientWidth, sh = this.stage.clientHeight;
    if (!sw || !sh) return;
    const [w, h] = sw / sh > aspect ? [Math.round(sh * aspect), sh] : [sw, Math.round(sw / aspect)];
    const c = this.canvas;
    if (c.width !== w - 2 || c.height !== h - 2) [c.width, c.height] = [Math.max(w - 2, 1), Math.max(h - 2, 1)];
    const ctx = c.getContext("2d");
    this.#drawBackground(ctx, c.width, c.height);
    if (this.backdrop) ctx.drawImage(this.backdrop, 0, 0, c.width, c.height);
    this.layer ??= document.createElement("canvas");
    [this.layer.width, this.layer.height] = [c.width, c.height];
    const { state } = this.model;
    state.regions.forEach((region) => {
      if (region.hidden) return;
      paintRegion(this.layer, region, state, this.#maskImage(region.mask));
      ctx.globalAlpha = FILL_ALPHA;
      // Feather preview: the same Gaussian (sigma = feather / 2 picture pixels) the nodes apply.
      const sigma = (Number(region.feather) || 0) / 2 * c.width / this.pictureWidth;
      ctx.filter = sigma > 0.3 ? `blur(${sigma.toFixed(2)}px)` : "none";
      ctx.drawImage(this.layer, 0, 0);
      ctx.filter = "none";
      ctx.globalAlpha = 1;
    });
    this.#drawSelection(ctx, c.width, c.height);
  }

  #drawBackground(ctx, w, h) {
    // Uncovered background as a grey checkerboard, so it reads clearly under the translucent regions.
    const cell = 12;
    for (let y = 0; y < h; y += cell) {
      for (let x = 0; x < w; x += cell) {
        ctx.fillStyle = (x / cell + y / cell) % 2 ? "#6b6b6b" : "#8a8a8a";
        ctx.fillRect(x, y, cell, cell);
      }
    }
  }

  #drawSelection(ctx, w, h) {
    const region = this.model.region;
    if (!region || region.hidden) return;
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 1.5;
    ctx.setLineDash([4, 3]);
    for (const s of region.shapes) {
      if (s.type !== "rect") continue;
      ctx.strokeRect(s.x * w, s.y * h, s.w * w, s.h * h);
      ctx.fillStyle = "#ffffff";
      for (const [hx, hy] of [[s.x, s.y], [s.x + s.w, s.y], [s.x, s.y + s.h], [s.x + s.w, s.y + s.h]]) {
        ctx.fillRect(hx * w - 3, hy * h - 3, 6, 6);
      }
    }
    ctx.setLineDash([]);
  }

  #maskImage(data) {
    if (typeof data !== "string") return null;
    if (!this.maskImages.has(data)) {
      const image = new Image();
      image.onload = () => this.render();
      image.src = data.startsWith("data:") ? data : `data:image/png;base64,${data}`;
      this.maskImages.set(data, image);
    }
    return this.maskImages.get(data);
  }

  #renderList() {
    const { model } = this;
    const rows = model.state.regions.map((region, i) => {
      const row = el("div", { className: `rl-row${i === model.selected ? " rl-selected" : ""}` });
      row.dataset.index = String(i);
      row.addEventListener("pointerdown", () => {
        if (model.selected !== i) {
          model.selected = i;
          for (const other of this.list.children) other.classList.toggle("rl-selected", other === row);
          this.render();
        }
      });
      const color = el("input", { type: "color", value: region.color || "#888888", title: "Region colour",
        className: "rl-color" });
      color.addEventListener("change", () => model.setField(i, "color", color.value));
      // Text goes through .value only: prompts containing HTML are shown as text, never parsed.
      const name = this.#textField("input", region.name ?? "", "Region name", "rl-name", (v) => (region.name = v));
      const prompt = this.#textField("textarea", region.prompt ?? "", "Prompt for this region", "rl-prompt",
        (v) => (region.prompt = v));
      const feather = el("input", { type: "number", min: "0", max: "256", step: "1", value: region.feather ?? 0,
        title: "Feather (pixels)", className: "rl-feather" });
      feather.addEventListener("change", () => model.setField(i, "feather", Math.min(256, Math.max(0,
        Number(feather.value) || 0))));
      const buttons = el("span", {}, [
        button("▲", "Move up (drawn first)", () => model.moveRegion(i, -1), "rl-up"),
        button("▼", "Move down", () => model.moveRegion(i, 1), "rl-down"),
        button(region.hidden ? "◌" : "●", region.hidden ? "Show" : "Hide in the editor (still applies)",
          () => model.setField(i, "hidden", !region.hidden), "rl-hide"),
        button("✕", "Delete region", () => model.removeRegion(i), "rl-delete"),
      ]);
      row.append(color, name, prompt, feather, buttons);
      return row;
    });
    this.list.replaceChildren(...rows);
  }

  /** A text input whose typing updates the state live and lands in the undo history as one step. */
  #textField(tag, value, title, className, assign) {
    const field = el(tag, { value, title, className, placeholder: title, spellcheck: false });
    let before = null;
    field.addEventListener("focus", () => (before = this.model.serialize()));
    field.addEventListener("input", () => {
      assign(field.value);
      this.written = this.model.serialize();
      this.stateWidget.value = this.written;
    });
    field.addEventListener("change", () => {
      if (before !== null) this.model.commit(before);
      before = this.model.serialize();
    });
    return field;
  }
}

app.registerExtension({
  name: "RegionalLayout.RegionEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    chainCallback(nodeType.prototype, "onNodeCreated", function () {
      this.regionEditor = new RegionEditor(this);
      const [w, h] = this.size;
      this.setSize([Math.max(w, 420), Math.max(h, 640)]);
    });
    chainCallback(nodeType.prototype, "onConfigure", function () {
      this.regionEditor?.syncFromWidget(true);
    });
    chainCallback(nodeType.prototype, "onExecuted", function (message) {
      this.regionEditor?.setBackdrop(message?.rl_backdrop?.[0]);
    });
  },
});
