// Prints the range table the Rust tests check Seaport's range matcher against,
// with npm semver's own answers:
//
//   range<TAB>version<TAB>true|false   semver.satisfies(version, range)
//   range<TAB><TAB>invalid             semver.validRange(range) === null
//
// The ranges are a fixed list of hand-picked cases (among them npm's length
// limits) plus thousands drawn from a grammar of node-semver's range syntax
// (valid and invalid spellings: prefixes, operators, X-ranges, prereleases,
// build metadata, hyphen ranges, unions, stray whitespace, and a few
// character-level edits of those) by a seeded generator, so the output is the
// same on every run. Run: node gen.mjs > ../../tests/data/semver-ranges.tsv
//
// Options: --seed N, --ranges N (how many distinct ranges), --versions N (how
// many versions each valid range is checked against; "all" for every one).
import semver from "semver";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const { version } = JSON.parse(readFileSync(new URL("./node_modules/semver/package.json", import.meta.url)));

const { values: opts } = parseArgs({
  options: {
    seed: { type: "string", default: "7" },
    ranges: { type: "string", default: "6000" },
    versions: { type: "string", default: "12" },
  },
});
const SEED = Number(opts.seed);
const RANGES = Number(opts.ranges);
const PER_RANGE = opts.versions === "all" ? Infinity : Number(opts.versions);

// mulberry32: a small seeded generator, so the table is reproducible.
let state = SEED >>> 0;
const random = () => {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const chance = (p) => random() < p;
const int = (n) => Math.floor(random() * n);
// pick([[weight, value], ...]) or pick([value, ...]); a function value is called
const call = (v) => (typeof v === "function" ? v() : v);
const pick = (items) => {
  if (!Array.isArray(items[0])) return call(items[int(items.length)]);
  const total = items.reduce((s, [w]) => s + w, 0);
  let r = random() * total;
  for (const [w, v] of items) {
    if ((r -= w) < 0) return call(v);
  }
  return call(items[items.length - 1][1]);
};

const versions = {
  release: [
    "0.0.0", "0.0.1", "0.0.2", "0.1.0", "0.1.2", "0.2.3", "1.0.0", "1.0.1", "1.1.0", "1.2.0", "1.2.2",
    "1.2.3", "1.2.4", "1.3.0", "2.0.0", "2.0.1", "2.3.4", "3.0.0", "3.2.1", "10.0.0", "1.2.3+build.5",
    "9007199254740991.0.0",
  ],
  prerelease: [
    "0.0.0-0", "0.0.1-alpha", "0.1.0-beta", "1.0.0-rc.1", "1.2.3-0", "1.2.3-alpha", "1.2.3-alpha.1",
    "1.2.3-beta", "1.2.3-beta.2", "1.2.3-beta.11", "1.2.3-rc.1", "1.2.4-alpha", "1.3.0-0", "2.0.0-0",
    "2.0.0-rc.1", "3.0.0-beta.1", "1.2.3-beta.2+build",
  ],
};

// The grammar. Weights favour valid spellings and small numbers, so that
// most ranges select some of the versions above; the rest are the spellings
// npm rejects or reads in a surprising way. `noise` scales how often a range
// gets the spellings npm rejects; it is set per range, so that some ranges
// are all clean and others rough.
let noise = 1;
const number = () =>
  pick([
    [30, () => pick(["0", "1", "2", "3"])],
    [4, "10"],
    [3 * noise, () => pick(["01", "00", "007"])],
    [1, () => pick(["9007199254740991", "9007199254740990"])],
    [1 * noise, () => pick(["9007199254740992", "99999999999999999999"])],
  ]);
const wildcard = () => pick([[3, "x"], [2, "*"], [1, "X"]]);
const component = (pWild) => (chance(pWild) ? wildcard() : number());
const identifier = () =>
  pick([
    [6, () => pick(["alpha", "beta", "rc", "0", "1", "2", "11"])],
    [1, () => pick(["x", "a-b", "-", "0a", "beta-2", "B"])],
    [1 * noise, () => pick(["01", "", "é", "a_b"])],
  ]);
const prerelease = () => {
  const ids = [identifier()];
  while (chance(0.35)) ids.push(identifier());
  return "-" + ids.join(".");
};
const build = () =>
  "+" + pick([[4, "build"], [2, "001"], [2, "sha.5"], [1, "a-b.c"], [1 * noise, ""], [1 * noise, "b_1"]]);
const prefix = () =>
  pick([
    [40, ""], [3, "v"], [3, "="], [2, "v="], [2, "=v"],
    [1 * noise, "V"], [1 * noise, "vv"], [1 * noise, "=="], [1 * noise, "v "], [1 * noise, "= "],
  ]);

// A version with parts possibly left out or written as wildcards.
const partial = () => {
  const parts = pick([[3, 1], [5, 2], [12, 3], [1 * noise, 4], [1 * noise, 0]]);
  const pWild = pick([[3, 0], [2, 0.3], [1, 0.7]]);
  const comps = [];
  for (let i = 0; i < parts; i++) comps.push(component(pWild));
  let text = comps.join(".");
  if (parts === 0) text = pick(["", ".", "1.", "1..2", ".1"]);
  else if (chance(0.03 * noise)) text += pick([".", "..", "-", "+"]);
  if (chance(parts === 3 ? 0.3 : 0.1 * noise)) text += chance(1 - 0.1 * noise) ? prerelease() : "-";
  if (chance(0.08)) text += build();
  if (chance(0.02 * noise)) text = chance(0.5) ? `*${text}` : `${text}*`;
  return prefix() + text;
};

const operator = () =>
  pick([
    [20, ""],
    [3, "="],
    [5, "<"],
    [5, ">"],
    [5, "<="],
    [6, ">="],
    [7, "~"],
    [2, "~>"],
    [8, "^"],
    [1 * noise, () => pick(["==", "=>", "=<", ">>", "<>", "~^", "^~", "!", "!=", "^^", "~~", ">=="])],
  ]);

const garbage = () =>
  pick(["latest", "a", "-", "+", "|", "1.2.3.4", "x.x.x.x", "~", "^", ">=", "<", "*", "**", "x-", "1.2.3-+", "&&", ",", "1,2"]);

const simple = () => {
  if (chance(0.03 * noise)) return garbage();
  const op = operator();
  const space = chance(0.06) ? pick([" ", "  "]) : "";
  return op + space + partial();
};

const space = () => pick([[30, " "], [2, "  "], [1, "\u00a0"], [1, "\u3000"], [1, "\v"], [1, " \ufeff"]]);

const hyphen = () => {
  const side = () => (chance(0.08 * noise) ? pick(["", "*", "x", ">=1.2.3", "^1.2"]) : partial());
  const dash = pick([[20, " - "], [2 * noise, () => pick(["-", " -", "- ", " -- ", "  -  ", " - - "])]]);
  return side() + dash + side();
};

const alternative = () =>
  pick([
    [3, () => pick(["", " ", "*", "x", ">=0.0.0", "^*"])],
    [4, hyphen],
    [
      25,
      () => {
        const words = [simple()];
        while (words.length < 4 && chance(0.35)) words.push(simple());
        return words.join(space());
      },
    ],
  ]);

// A character-level edit or two of a range from the grammar, for the
// spellings the grammar does not reach.
const mutate = (r) => {
  const alphabet = ["0", "1", "2", ".", "-", "+", "*", "x", "v", "=", "<", ">", "^", "~", "|", " ", "a"];
  for (let n = 1 + int(2); n > 0; n--) {
    const i = int(r.length + 1);
    r = pick([
      () => r.slice(0, i) + r.slice(i + 1),
      () => r.slice(0, i) + pick(alphabet) + r.slice(i + 1),
      () => r.slice(0, i) + pick(alphabet) + r.slice(i),
      () => {
        const j = int(r.length + 1);
        return r.slice(0, i) + r.slice(Math.min(i, j), Math.max(i, j)) + r.slice(i);
      },
    ]);
  }
  return r;
};

const rangeText = () => {
  noise = pick([[4, 0], [2, 0.5], [1, 1]]);
  if (chance(0.08)) return mutate(rangeText());
  const alts = [alternative()];
  while (alts.length < 4 && chance(0.25)) alts.push(alternative());
  let out = alts[0];
  for (const a of alts.slice(1)) {
    out += pick([[10, " || "], [4, "||"], [1, "|| "], [1, " ||"], [1 * noise, " | "], [1 * noise, "|||"]]) + a;
  }
  if (chance(0.05)) out = space() + out;
  if (chance(0.05)) out += space();
  return out;
};

// Cases chosen by hand: the documented syntax, and each class the hardening
// issue names (empty range, X-range with a prerelease, a union with *, loose
// spellings npm rejects).
const fixed = [
  "1.2.3", "=1.2.3", "v1.2.3", "1.2.3-beta.2", "2.3.4",
  "1", "1.2", "1.x", "1.2.x", "1.X", "1.2.*", "*", "x", "0.x", "2.x.x",
  "^1.2.3", "^0.2.3", "^0.0.3", "^1.2", "^0.x", "^0.0", "^1.2.3-beta.2", "^0.0.3-beta", "^1.x", "^2",
  "~1.2.3", "~1.2", "~1", "~0.2.3", "~1.2.3-beta.2", "~>1.2.3", "~0",
  ">1.2.0", ">=1.0.0 <2.0.0", "<=1.2.3", "<1.2", ">1.2", ">=1.2", "<=1", ">1", "<1.2.3", ">=2.3.4", "<0.2.3",
  ">=1.2.3 <1.2.3", ">2.0.0 <1.0.0", ">=1.2.3 <=1.2.3",
  "1.2.3 - 2.3.4", "1.2 - 2.3", "1.2.3 - 2", "0.2.3 - 1.2.3-beta.4", "* - 2.0.0",
  "1.x || >=2.5.0", "1.2.3 || 2.0.0", "<1.0.0 || >=3.0.0", "^0.2.3 || ^1.3.0", "~1.2.3 || 2.x || 3.0.0",
  ">1.2.3-alpha.3", "1.2.3-alpha.3", ">=1.2.3-rc.1 <1.3.0", ">=1.2.3-alpha.3 <1.2.3", "<1.2.3-beta.2", ">=1.3.0-rc.1",
  ">= 1.2.3", ">=1.2.3  <2", "  ^1.2.3  ", "< 2.0.0", "~ 1.2", ">=1.2.3 <2.0.0 || >=2.5.0 <3",
  "", " ", "1.2.x-beta", "1.2.*-beta.1", "^1.2.x-rc", "~1.2.x-0", ">1.2.x-beta", "1.x-beta", "*-beta",
  "* || 1.2.3-beta", "1.2.3-beta || *", "x || 1.2.3-alpha", ">=0.0.0 || 1.2.3-beta", "|| 1.2.3-beta", "1.2.3-beta ||",
  "v=1.2.3", "v=1.2.x", "=v1.2.3", "vv1.2.3", "==1.2.3", "1.2.3-", "1.2.3+", "1.2-", "1.2.3-beta.", "1.2.3+build",
  "x.1.2", "1.*.3", "x.x.1", "*.1", "^x.1", "~*.1.2", "1.2.3 - x.1.2", "1.2.3 -", "- 1.2.3", "1.2.3 - ", " - ",
  "1.2.3 - v2", "1.2.3 - =2", "=1.2.3 - 2", "1.2 - =2", "1.2.3 +b - 2", "1.2.3 - +b 2", "1.2.3*", "*1.2.3",
  ">=*1.2.3", "+abc", "^9007199254740991", "9007199254740991.x", "9007199254740992", "<9007199254740991.0.0",
  ">=1.2.3-0 <1.2.3", "<0.0.0-0", "<0.0.0-0 || 1.2.3", "01.2.3", "1.02.3", "1.2.03", "1.2.3-01", "1.2.3-0a",
  "~> 1.2", "^ 1.2", "> 1.2", ">= v1.2.3", ">=\u00a01.2.3", "\u3000^1.2\u3000", "1.2.3\u00a0-\u00a02",
  "1.2.3+*v", ">=1.2.3+*b", "1.2.3-beta*", "v0.0.0+<*-0", "1.2.3 - 2.0.0 - 3", "1.2.3 |||| 2", "1.2.3 ||| 2",
];

// npm's length limits: numbers of at most 257 digits, prerelease identifiers
// of at most 250 characters after the first non-digit, versions of at most
// 256 characters; one case either side of each.
for (const n of [256, 257, 258]) {
  const digits = "1" + "0".repeat(n - 1);
  fixed.push(`${digits}.x`, `^x.${digits}`, `1.2.3 - x.${digits}`, `> ${digits}.0.0`, `1.2.x-${digits}`);
}
for (const n of [249, 250, 251]) {
  const id = "a".repeat(n + 1);
  fixed.push(`1.2.x-${id}`, `1.2.x-9${id}`, `1.2.3 - 2.x-${id}`, `^1.2.x-${id}`);
}
for (const n of [255, 256, 257]) {
  const pre = "b".repeat(n - "1.2.3-".length);
  fixed.push(`1.2.3-${pre}`, `v1.2.3-${pre.slice(1)}`, `^1.2.3-${pre}`, `1.2.3-${pre} - 2`, `1.2.3+${pre}`);
}

const ranges = new Set();
for (const r of fixed) ranges.add(r);
let attempts = 0;
while (ranges.size < RANGES && attempts++ < RANGES * 50) {
  const r = rangeText();
  if (/[\t\n\r]/.test(r) || r.startsWith("#")) continue;
  ranges.add(r);
}

const pool = [...versions.release, ...versions.prerelease];
const sample = () => {
  if (PER_RANGE >= pool.length) return pool;
  // Half releases, half prereleases, in pool order.
  const take = (list, n) => {
    const chosen = new Set();
    while (chosen.size < Math.min(n, list.length)) chosen.add(list[int(list.length)]);
    return list.filter((v) => chosen.has(v));
  };
  const half = Math.ceil(PER_RANGE / 2);
  return [...take(versions.release, half), ...take(versions.prerelease, PER_RANGE - half)];
};

const out = [
  `# generated by scripts/semver-table/gen.mjs from npm semver ${version}, seed ${SEED}, ${ranges.size} ranges; do not edit`,
  "# range<TAB>version<TAB>true|false is semver.satisfies(version, range); range<TAB><TAB>invalid: validRange is null",
];
for (const range of ranges) {
  if (semver.validRange(range) === null) {
    out.push(`${range}\t\tinvalid`);
    continue;
  }
  for (const v of sample()) {
    out.push(`${range}\t${v}\t${semver.satisfies(v, range)}`);
  }
}
process.stdout.write(out.join("\n") + "\n");
