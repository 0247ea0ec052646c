// Runs inside the real ComfyUI editor (the simulator's), as the oracle for autopod's editor-to-API conversion.
// Every variation is made with the editor's own graph API, then read back as the editor sends it on Queue:
// app.graphToPrompt() gives {workflow (what "Save" writes), output (the API prompt)}.
(() => {
  const app = window.app;
  const LiteGraph = window.LiteGraph;
  const QUIET = {showMissingNodesDialog: false, showMissingModelsDialog: false};
  const EDITOR_ONLY = ["Note", "MarkdownNote", "Reroute", "PrimitiveNode"];

  async function load(wf) {
    await app.loadGraphData(structuredClone(wf), true, true, null, QUIET);
    // each load opens a temporary workflow tab; close the others so the editor stays as fast as at the start
    const store = app.extensionManager.workflow;
    for (const w of [...store.openWorkflows]) {
      if (w !== store.activeWorkflow && w.isTemporary) await store.closeWorkflow(w);
    }
  }

  // As JSON text, as a saved file and a queued prompt are: a value the page leaves undefined is absent, not null.
  // A graph the editor cannot queue (graphToPrompt throws) comes back with the error and the graph as saved.
  async function read(kind, label) {
    try {
      const {workflow, output} = await app.graphToPrompt();
      return {kind, label, workflow: JSON.stringify(workflow), output: JSON.stringify(output)};
    } catch (e) {
      return {kind, label, workflow: JSON.stringify(app.graph.serialize()), error: String(e)};
    }
  }

  const isPlain = (n) => !EDITOR_ONLY.includes(n.type) && !n.isSubgraphNode?.();
  const valueWidgets = (n) => (n.widgets || []).filter(
    (w) => ["number", "combo", "text", "customtext", "toggle", "slider"].includes(w.type)
      && !["control_after_generate", "control_filter_list"].includes(w.name) && !w.disabled);

  function otherValue(w) {
    const v = w.value;
    if (w.type === "combo") {
      const values = typeof w.options.values === "function" ? w.options.values() : w.options.values || [];
      return values.find((x) => x !== v);
    }
    if (w.type === "toggle") return !v;
    if (w.type === "number" || w.type === "slider") {
      const step = w.options.step2 || 1;
      const max = w.options.max ?? Infinity, min = w.options.min ?? -Infinity;
      if (Number(v) + step <= max) return Number(v) + step;
      return Number(v) - step >= min ? Number(v) - step : undefined;
    }
    // text: comments and a one-option {choice} too, which the editor resolves on Queue (dynamic prompts)
    return `${v}, /* a comment */ {changed} in the editor // to the end of the line`;
  }

  // A graph of the model-free nodes the simulated pod runs, built with the editor's node factory.
  async function modelFree() {
    await load({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {}, extra: {},
                version: 0.4});
    const add = (type, pos) => { const n = LiteGraph.createNode(type); n.pos = pos; app.graph.add(n); return n; };
    const empty = add("EmptyImage", [0, 0]);
    const image = add("LoadImage", [0, 300]);
    const blur = add("ImageBlur", [300, 0]);
    const scale = add("ImageScale", [600, 0]);
    const blur2 = add("ImageBlur", [300, 300]);
    const save = add("SaveImage", [900, 0]);
    const preview = add("PreviewImage", [900, 300]);
    empty.connect(0, blur, 0);
    blur.connect(0, scale, 0);
    scale.connect(0, save, 0);
    image.connect(0, blur2, 0);
    blur2.connect(0, preview, 0);
    save.widgets.find((w) => w.name === "filename_prefix").value = "from-the-editor";
    add("Note", [0, 600]).widgets[0].value = "made in the editor";
    return JSON.stringify((await app.graphToPrompt()).workflow);
  }

  // Between variations the graph goes back to the base with the graph's own configure() (milliseconds, where
  // loadGraphData takes a tenth of a second); the editor must then send exactly what it sent after loading it.
  let baseOutput = null;
  async function reset(base) {
    app.graph.configure(structuredClone(base));
    const again = JSON.stringify((await app.graphToPrompt()).output);
    if (again !== baseOutput) throw new Error(`reset did not restore the base: ${again} != ${baseOutput}`);
  }

  async function variations(loaded, label, limit) {
    const out = [];
    const cap = (list) => list.slice(0, limit);
    await load(typeof loaded === "string" ? JSON.parse(loaded) : loaded);
    const base = structuredClone((await app.graphToPrompt()).workflow);
    baseOutput = JSON.stringify((await app.graphToPrompt()).output);
    const node = (id) => app.graph.getNodeById(id);
    const ids = app.graph.nodes.filter(isPlain).map((n) => n.id);
    const linkIds = [...app.graph.links.values()].filter(Boolean).map((l) => l.id);
    const widgetTargets = [];
    for (const id of ids) for (const w of valueWidgets(node(id))) widgetTargets.push([id, w.name]);
    out.push(await read("as loaded", label));

    for (const id of cap(ids)) for (const mode of [2, 4]) {
      await reset(base);
      node(id).mode = mode;
      out.push(await read(mode === 4 ? "bypassed node" : "muted node", `${label}: node ${id}`));
    }
    for (const [id, name] of cap(widgetTargets)) {
      await reset(base);
      const w = node(id).widgets.find((x) => x.name === name);
      const v = otherValue(w);
      if (v === undefined) continue;
      w.value = v;
      out.push(await read("widget value", `${label}: node ${id} ${name}`));
    }
    for (const linkId of cap(linkIds)) for (const count of [1, 2]) {
      await reset(base);
      const link = app.graph.links.get(linkId);
      let origin = node(link.origin_id), slot = link.origin_slot;
      const target = node(link.target_id), targetSlot = link.target_slot;
      for (let i = 0; i < count; i++) {
        const r = LiteGraph.createNode("Reroute");
        r.pos = [origin.pos[0] + 40 * (i + 1), origin.pos[1] + 40];
        app.graph.add(r);
        origin.connect(slot, r, 0);
        origin = r;
        slot = 0;
      }
      origin.connect(slot, target, targetSlot);
      out.push(await read("reroute node", `${label}: link ${linkId} through ${count}`));
    }
    for (const linkId of cap(linkIds)) {  // the editor's native reroutes: points on a link, not nodes
      await reset(base);
      const link = app.graph.links.get(linkId);
      const o = node(link.origin_id);
      app.graph.createReroute([o.pos[0] + 30, o.pos[1] - 30], link);
      out.push(await read("native reroute", `${label}: link ${linkId}`));
    }
    for (const [id, name] of cap(widgetTargets)) {  // a widget fed by a primitive node, its value changed
      await reset(base);
      const target = node(id);
      const slot = target.inputs.findIndex((i) => i.widget?.name === name);
      if (slot < 0 || target.inputs[slot].link != null) continue;
      const prim = LiteGraph.createNode("PrimitiveNode");
      prim.pos = [target.pos[0] - 250, target.pos[1]];
      app.graph.add(prim);
      prim.connect(0, target, slot);
      const pw = prim.widgets?.find((w) => w.name === "value");
      if (!pw) continue;
      const v = otherValue(pw);
      if (v !== undefined) pw.value = v;
      out.push(await read("primitive node", `${label}: node ${id} ${name}`));
    }
    // subgraphs: one node, a link's two ends, everything but the output nodes; nested; bypassed and muted
    const pairs = [];
    for (const linkId of linkIds) {
      const l = app.graph.links.get(linkId);
      if (isPlain(node(l.origin_id)) && isPlain(node(l.target_id))) pairs.push([l.origin_id, l.target_id]);
    }
    // the busiest first: a target with more linked inputs leaves more links crossing the subgraph's edge
    const linked = (id) => node(id).inputs.filter((i) => i.link != null).length;
    pairs.sort((a, b) => linked(b[1]) - linked(a[1]));
    const subsets = [ids.filter((id) => !node(id).constructor.nodeData?.output_node)];
    for (let i = 0; i < Math.max(pairs.length, ids.length); i++) {  // pairs and single nodes in turn
      if (pairs[i]) subsets.push(pairs[i]);
      if (ids[i] !== undefined) subsets.push([ids[i]]);
    }
    for (const subset of cap(subsets.filter((s) => s.length))) {
      const what = `${label}: nodes ${subset.join(",")}`;
      await reset(base);
      const made = app.graph.convertToSubgraph(new Set(subset.map(node)));
      out.push(await read("subgraph", what));
      const inner = made.subgraph.nodes.find(isPlain);
      if (subset.length > 1 && inner) {
        made.subgraph.convertToSubgraph(new Set([inner]));
        out.push(await read("nested subgraph", `${what}, ${inner.type} inside`));
      }
      for (const mode of [2, 4]) {
        await reset(base);
        app.graph.convertToSubgraph(new Set(subset.map(node))).node.mode = mode;
        out.push(await read(mode === 4 ? "bypassed subgraph" : "muted subgraph", what));
      }
    }
    return out;
  }


  // Legacy group nodes, made with the editor's own command (Convert selected nodes to group node): its name
  // dialog is answered as a person would. Then a widget value on the group node, and the group node muted and
  // bypassed. The group's definition is saved in the file (extra.groupNodes).
  let groupCount = 0;
  async function toGroupNode(nodes) {
    app.canvas.deselectAll();
    for (const n of nodes) app.canvas.select(n);
    const done = app.extensionManager.command.execute("Comfy.GroupNode.ConvertSelectedNodesToGroupNode");
    const name = `Group ${++groupCount}`;
    let input = null;
    for (let i = 0; i < 200 && !input; i++) {
      await new Promise((r) => setTimeout(r, 10));
      input = document.querySelector(".p-dialog input");
    }
    if (!input) throw new Error("the group node's name dialog did not open");
    input.value = name;
    input.dispatchEvent(new Event("input", {bubbles: true}));
    input.dispatchEvent(new KeyboardEvent("keyup", {key: "Enter", bubbles: true}));
    input.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true}));
    await done;
    return app.graph.nodes.find((n) => n.type === `workflow>${name}`);
  }

  // A PrimitiveNode (titled when `title` is given) feeding widget `name` of node `id`, its value changed: a base
  // graph for group nodes that hold one.
  async function withPrimitive(loaded, id, name, title) {
    await load(typeof loaded === "string" ? JSON.parse(loaded) : loaded);
    const target = app.graph.getNodeById(id);
    const prim = LiteGraph.createNode("PrimitiveNode");
    prim.pos = [target.pos[0] - 250, target.pos[1] + 150];
    app.graph.add(prim);
    prim.connect(0, target, target.inputs.findIndex((i) => i.widget?.name === name));
    if (title) prim.title = title;
    const pw = prim.widgets.find((w) => w.name === "value");
    pw.value = otherValue(pw);
    return JSON.stringify((await app.graphToPrompt()).workflow);
  }

  async function groupNodes(loaded, label, subsets) {
    const out = [];
    await load(typeof loaded === "string" ? JSON.parse(loaded) : loaded);
    const base = structuredClone((await app.graphToPrompt()).workflow);
    const node = (id) => app.graph.getNodeById(id);
    for (const subset of subsets) {  // a list of lists: several group nodes, made in turn
      const groups = Array.isArray(subset[0]) ? subset : [subset];
      const what = `${label}: nodes ${groups.map((s) => s.join(",")).join(" / ")}`;
      await load(base);
      let g = null;
      for (const s of groups) g = await toGroupNode(s.map(node));
      if (!g) throw new Error(`no group node was made of ${what}`);
      out.push(await read("group node", what));
      const w = valueWidgets(g).find((x) => otherValue(x) !== undefined);
      if (w) {
        w.value = otherValue(w);
        out.push(await read("group node widget", `${what}: ${w.name}`));
      }
      for (const mode of [2, 4]) {
        g.mode = mode;
        out.push(await read(mode === 4 ? "bypassed group node" : "muted group node", what));
      }
    }
    return out;
  }

  // A Reroute between two nodes, then the three made a group node: what the editor sends for it, live and after
  // the saved file is loaded again (autopod refuses such a file; this records why).
  async function rerouteInGroup() {
    await load(JSON.parse(await modelFree()));
    const blur = app.graph.getNodeById(3), scale = app.graph.getNodeById(4);
    const r = LiteGraph.createNode("Reroute");
    r.pos = [450, 100];
    app.graph.add(r);
    blur.connect(0, r, 0);
    r.connect(0, scale, 0);
    await toGroupNode([blur, r, scale]);
    const live = await read("group node", "a Reroute inside");
    await load(JSON.parse(live.workflow));
    return {live, reloaded: await read("group node", "a Reroute inside, reloaded")};
  }

  async function templates(named) {
    const out = {};
    for (const [name, wf] of Object.entries(named)) {
      try {
        await load(wf);
        out[name] = {output: JSON.stringify((await app.graphToPrompt()).output)};
      } catch (e) {
        out[name] = {error: String(e && e.stack || e)};
      }
    }
    return out;
  }

  window.autopodOracle = {load, read, modelFree, variations, templates, groupNodes, withPrimitive, rerouteInGroup};
})();
