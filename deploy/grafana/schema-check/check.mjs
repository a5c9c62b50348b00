// Checks every dashboard in deploy/grafana/dashboards against Grafana's schemas as
// published in @grafana/schema (generated from the CUE schemas Grafana validates with):
// the dashboard against `Dashboard`, each panel's `options` and `fieldConfig.defaults.custom`
// against its panel plugin's `Options` / `FieldConfig`. Each JSON value is written into a
// TypeScript file as a literal checked with `satisfies`, so the compiler refuses unknown
// fields (excess property checks), wrong types and values outside an enum; tsc then
// type-checks the generated files. Grafana's generated types use TypeScript enums where
// the JSON holds their string values, so each type is checked through `Json<T>`, which
// turns every enum into the union of its values and keeps everything else. Exits non-zero, naming the dashboard, the panel and
// the field, when anything does not fit.
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dashboards = join(here, "..", "dashboards");
const generated = join(here, "generated");
const panelcfg = (plugin, name) =>
  `@grafana/schema/dist/esm/raw/composable/${plugin}/panelcfg/x/${name}PanelCfg_types.gen`;

// The panel plugins the dashboards may use, with their schema modules. A dashboard with a
// panel of another type fails the check until that type is added here.
const plugins = {
  stat: { module: panelcfg("stat", "Stat"), custom: false },
  timeseries: { module: panelcfg("timeseries", "TimeSeries"), custom: true },
  gauge: { module: panelcfg("gauge", "Gauge"), custom: false },
  bargauge: { module: panelcfg("bargauge", "BarGauge"), custom: false },
  table: { module: panelcfg("table", "Table"), custom: true },
  text: { module: panelcfg("text", "Text"), custom: false },
};

rmSync(generated, { recursive: true, force: true });
mkdirSync(generated);
const problems = [];
for (const file of readdirSync(dashboards).filter((f) => f.endsWith(".json"))) {
  const dashboard = JSON.parse(readFileSync(join(dashboards, file), "utf8"));
  const lines = [
    `import type { Dashboard } from "@grafana/schema";`,
    "type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T" +
      " : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;",
  ];
  const used = new Set();
  const checks = [];
  for (const panel of dashboard.panels ?? []) {
    if (panel.type === "row") continue;
    const plugin = plugins[panel.type];
    const where = `panel ${panel.id} (${JSON.stringify(panel.title)})`;
    if (!plugin) {
      problems.push(`${file}: ${where}: panel type ${panel.type} is not one this check knows`);
      continue;
    }
    used.add(panel.type);
    const alias = panel.type.replace(/[^a-z]/g, "");
    checks.push(`// ${where}`);
    checks.push(`export const options_${panel.id} = ${JSON.stringify(panel.options ?? {})} satisfies Json<${alias}.Options>;`);
    if (plugin.custom) {
      const custom = panel.fieldConfig?.defaults?.custom ?? {};
      checks.push(`export const custom_${panel.id} = ${JSON.stringify(custom)} satisfies Json<${alias}.FieldConfig>;`);
    }
    for (const target of panel.targets ?? []) {
      if (typeof target.expr !== "string" || typeof target.refId !== "string") {
        problems.push(`${file}: ${where}: a target without a PromQL expr and a refId`);
      }
    }
  }
  for (const type of used) {
    lines.push(`import type * as ${type.replace(/[^a-z]/g, "")} from "${plugins[type].module}";`);
  }
  lines.push(`export const dashboard = ${JSON.stringify(dashboard, null, 2)} satisfies Json<Dashboard>;`);
  lines.push(...checks);
  writeFileSync(join(generated, file.replace(/\.json$/, ".ts")), lines.join("\n") + "\n");
}
for (const problem of problems) console.error(problem);
try {
  execFileSync(process.execPath, [join(here, "node_modules", "typescript", "bin", "tsc"), "-p", here], {
    stdio: "inherit",
  });
} catch {
  console.error("the dashboards do not fit Grafana's schema (errors above, in generated/*.ts)");
  process.exit(1);
}
if (problems.length > 0) process.exit(1);
console.log(`dashboards fit Grafana's schema (@grafana/schema): ${readdirSync(generated).join(", ")}`);
