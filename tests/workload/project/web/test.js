const assert = require("assert");
const leftPad = require("corp-left-pad");

assert.strictEqual(leftPad("7", 3, "0"), "007");
assert.strictEqual(leftPad("1234", 3, "0"), "1234");
console.log("web: 2 tests passed");
