#!/usr/bin/env node
// Compile ParityToken.sol and StakeWallet.sol with the pinned solc from npm (no download) and
// write src/parity/chain/artifacts/<Contract>.json = {contractName, compiler, evmVersion, abi,
// bytecode}. The output is deterministic: the same sources and package-lock give the same bytes.
//
//   node compile.js            write the artifacts into the Python package
//   node compile.js OUT_DIR    write them into OUT_DIR instead (the freshness test compares)
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const HERE = __dirname;
const CONTRACTS = ['ParityToken', 'StakeWallet'];
// FEVM's supported hardforks are not certain to include Shanghai (PUSH0) or Cancun; paris
// bytecode runs everywhere.
const EVM_VERSION = 'paris';
const OUT = process.argv[2]
  ? path.resolve(process.argv[2])
  : path.join(HERE, '..', 'src', 'parity', 'chain', 'artifacts');

const sources = {};
for (const name of CONTRACTS) {
  sources[`${name}.sol`] = { content: fs.readFileSync(path.join(HERE, `${name}.sol`), 'utf8') };
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
  },
};

function findImports(importPath) {
  const file = path.join(HERE, 'node_modules', importPath);
  try {
    return { contents: fs.readFileSync(file, 'utf8') };
  } catch (err) {
    return { error: `not found: ${importPath} (run npm ci in contracts/)` };
  }
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
let failed = false;
for (const err of output.errors || []) {
  console.error(err.formattedMessage || err.message);
  if (err.severity === 'error') failed = true;
}
if (failed) process.exit(1);

fs.mkdirSync(OUT, { recursive: true });
for (const name of CONTRACTS) {
  const compiled = output.contracts[`${name}.sol`][name];
  const artifact = {
    contractName: name,
    compiler: `solc ${solc.version()}`,
    evmVersion: EVM_VERSION,
    abi: compiled.abi,
    bytecode: `0x${compiled.evm.bytecode.object}`,
  };
  const file = path.join(OUT, `${name}.json`);
  fs.writeFileSync(file, `${JSON.stringify(artifact, null, 2)}\n`);
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}
