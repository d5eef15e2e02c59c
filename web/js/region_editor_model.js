// The region editor's state (schema version 1, see layout/layout_json.py), its undo history and drawing.
// This module only exports: every .js under web/ is auto-loaded as an extension, so no side effects here.

export const SCHEMA_VERSION = 1;
export const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
  "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#000075"];
const MAX_HISTORY = 100;

export function emptyState() {
  return { version: SCHEMA_VERSION, regions: [] };
}

/** Parse the hidden widget's JSON; anything unreadable becomes an empty layout (the backend reports errors). */
export function parseState(text) {
  try {
    const state = JSON.parse(text || "");
    if (state && typeof state === "object" && Array.isArray(state.regions)) {
      state.version ??= SCHEMA_VERSION;
      for (const region of state.regions) region.shapes = Array.isArray(region.shapes) ? region.shapes : [];
      return state;
    }
  } catch (err) {
    console.warn("[RegionalLayout] unreadable editor_state, starting empty:", err.message);
  }
  return emptyState();
}

export class RegionEditorModel {
  constructor(onChange) {
    this.state = emptyState();
    this.selected = -1;
    this.undoStack = [];
    this.redoStack = [];
    this.onChange = onChange; // (model) => void, after every edit
  }

  load(text) {
    this.state = parseState(text);
    this.selected = Math.min(Math.max(this.selected, 0), this.state.regions.length - 1);
  }

  serialize() {
    return JSON.stringify(this.state);
  }

  get region() {
    return this.state.regions[this.selected] ?? null;
  }

  /** Run `mutate(state)` as one undoable edit. */
  edit(mutate) {
    const before = this.serialize();
    mutate(this.state);
    if (this.serialize() === before) return;
    this.undoStack.push({ text: before, selected: this.selected });
    if (this.undoStack.length > MAX_HISTORY) this.undoStack.shift();
    this.redoStack = [];
    this.onChange(this);
  }

  /** Record `before` (a serialize() taken earlier) as one undo step for changes already made in place. */
  commit(before) {
    if (this.serialize() === before) return;
    this.undoStack.push({ text: before, selected: this.selected });
    this.redoStack = [];
    this.onChange(this);
  }

  undo() {
    this.#travel(this.undoStack, this.redoStack);
  }

  redo() {
    this.#travel(this.redoStack, this.undoStack);
  }

  #travel(from, to) {
    const step = from.pop();
    if (!step) return;
    to.push({ text: this.serialize(), selected: this.selected });
    this.state = parseState(step.text);
    this.selected = Math.min(step.selected, this.state.regions.length - 1);
    this.onChange(this);
  }

  addRegion() {
    this.edit((state) => {
      const used = new Set(state.regions.map((r) => r.color));
      const color = PALETTE.find((c) => !used.has(c)) ?? PALETTE[state.regions.length % PALETTE.length];
      state.regions.push({ name: `region ${state.regions.length + 1}`, prompt: "", color, feather: 0, shapes: [] });
      this.selected = state.regions.length - 1;
    });
  }

  removeRegion(index) {
    this.edit((state) => {
      state.regions.splice(index, 1);
      this.selected = Math.min(this.selected, state.regions.length - 1);
    });
  }

  moveRegion(index, delta) {
    const target = index + delta;
    if (target < 0 || target >= this.state.regions.length) return;
    this.edit((state) => {
      const [region] = state.regions.splice(index, 1);
      state.regions.splice(target, 0, region);
      this.selected = target;
    });
  }

  setField(index, key, value) {
    this.edit((state) => {
      state.regions[index][key] = value;
    });
  }

  clearRegion(index) {
    this.edit((state) => {
      const region = state.regions[index];
      region.shapes = [];
      delete region.box;
      delete region.mask;
    });
  }

  /** The topmost rectangle of the selected region under (x, y), and which handle ("move", "nw", ...). */
  hitRect(x, y, handleX, handleY) {
    const shapes = this.region?.shapes ?? [];
    for (let i = shapes.length - 1; i >= 0; i--) {
      const s = shapes[i];
      if (s.type !== "rect") continue;
      for (const [name, hx, hy] of [["nw", s.x, s.y], ["ne", s.x + s.w, s.y], ["sw", s.x, s.y + s.h],
        ["se", s.x + s.w, s.y + s.h]]) {
        if (Math.abs(x - hx) <= handleX && Math.abs(y - hy) <= handleY) return { index: i, handle: name };
      }
      if (x >= s.x && x <= s.x + s.w && y >= s.y && y <= s.y + s.h) return { index: i, handle: "move" };
    }
    return null;
  }
}

export function clamp01(v) {
  return Math.min(1, Math.max(0, v));
}

/** A rectangle from two corners, normalised and clipped to the picture. */
export function rectFromCorners(x0, y0, x1, y1) {
  const [ax, bx] = [clamp01(Math.min(x0, x1)), clamp01(Math.max(x0, x1))];
  const [ay, by] = [clamp01(Math.min(y0, y1)), clamp01(Math.max(y0, y1))];
  return { type: "rect", x: ax, y: ay, w: bx - ax, h: by - ay };
}

/** Move or resize rect `r` (normalised) by handle with the pointer at (x, y), from the drag's start. */
export function dragRect(start, handle, dx, dy) {
  if (handle === "move") {
    const x = Math.min(Math.max(start.x + dx, 0), 1 - start.w);
    const y = Math.min(Math.max(start.y + dy, 0), 1 - start.h);
    return { ...start, x, y };
  }
  let [x0, y0, x1, y1] = [start.x, start.y, start.x + start.w, start.y + start.h];
  if (handle.includes("w")) x0 += dx; else x1 += dx;
  if (handle.includes("n")) y0 += dy; else y1 += dy;
  return { ...start, ...rectFromCorners(x0, y0, x1, y1) };
}

function boxShape(region, state) {
  const box = region.box;
  if (!Array.isArray(box) || box.length !== 4) return null;
  const pixels = Math.max(...box.map(Math.abs)) > 1;
  const [sx, sy] = pixels ? [state.width || 1, state.height || 1] : [1, 1];
  return { type: "rect", x: box[0] / sx, y: box[1] / sy, w: box[2] / sx, h: box[3] / sy };
}

function traceShape(ctx, shape, cw, ch) {
  ctx.beginPath();
  if (shape.type === "rect") {
    ctx.rect(shape.x * cw, shape.y * ch, shape.w * cw, shape.h * ch);
    ctx.fill();
  } else if (shape.type === "ellipse") {
    ctx.ellipse((shape.x + shape.w / 2) * cw, (shape.y + shape.h / 2) * ch, shape.w * cw / 2, shape.h * ch / 2,
      0, 0, 2 * Math.PI);
    ctx.fill();
  } else if (shape.type === "polygon" && shape.points?.length >= 3) {
    shape.points.forEach(([x, y], i) => (i ? ctx.lineTo(x * cw, y * ch) : ctx.moveTo(x * cw, y * ch)));
    ctx.closePath();
    ctx.fill();
  } else if (shape.type === "stroke" && shape.points?.length) {
    ctx.globalCompositeOperation = shape.erase ? "destination-out" : "source-over";
    ctx.lineWidth = shape.size * cw;
    ctx.lineCap = ctx.lineJoin = "round";
    const [first, ...rest] = shape.points;
    if (!rest.length) {
      ctx.arc(first[0] * cw, first[1] * ch, shape.size * cw / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.moveTo(first[0] * cw, first[1] * ch);
      for (const [x, y] of rest) ctx.lineTo(x * cw, y * ch);
      ctx.stroke();
    }
    ctx.globalCompositeOperation = "source-over";
  }
}

/** The grey mask image as a canvas in `color` whose alpha is the mask (cached per colour). */
function tintedMask(image, color) {
  if (image._rlTint?.color === color) return image._rlTint.canvas;
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [image.naturalWidth, image.naturalHeight];
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const rgb = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  for (let i = 0; i < pixels.data.length; i += 4) {
    const alpha = pixels.data[i];
    [pixels.data[i], pixels.data[i + 1], pixels.data[i + 2], pixels.data[i + 3]] = [...rgb, alpha];
  }
  ctx.putImageData(pixels, 0, 0);
  image._rlTint = { color, canvas };
  return canvas;
}

/** Paint one region's coverage (embedded mask image, box, shapes; erasers clear) in its colour onto `layer`. */
export function paintRegion(layer, region, state, maskImage) {
  const ctx = layer.getContext("2d");
  const { width: cw, height: ch } = layer;
  ctx.clearRect(0, 0, cw, ch);
  ctx.fillStyle = ctx.strokeStyle = region.color || "#888888";
  if (maskImage?.complete && maskImage.naturalWidth) ctx.drawImage(tintedMask(maskImage, ctx.fillStyle), 0, 0, cw, ch);
  const box = boxShape(region, state);
  for (const shape of box ? [box, ...region.shapes] : region.shapes) traceShape(ctx, shape, cw, ch);
}
