'use strict';
// Loads the addon built by node-gyp (npm builds it on install: binding.gyp).
module.exports = require('./build/Release/ferry_native.node');
