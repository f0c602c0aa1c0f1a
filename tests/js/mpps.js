// A second, independent MPPS SCU for the interoperability test: dcmjs-dimse's
// NCreateRequest / NSetRequest on one association, each response printed as JSON with
// its whole command set (Offending Element included).
// usage: node mpps.js HOST PORT CALLING_AE CALLED_AE STEPS_JSON
//   STEPS_JSON: [{"op": "create" | "set", "uid": "...", "dataset": {naturalized}}, ...]
'use strict';
const { Client, log, requests, constants } = require('dcmjs-dimse');
const { Dataset } = require('dcmjs-dimse');

log.setLevel('silent');

const [host, port, calling, called, stepsJson] = process.argv.slice(2);
const steps = JSON.parse(stepsJson);
const mpps = constants.SopClass.ModalityPerformedProcedureStep;
const results = [];
let rejected = null;
let finalSeen = 0;
let lateError = null;

const client = new Client();
for (const step of steps) {
  const request =
    step.op === 'create'
      ? new requests.NCreateRequest(mpps, step.uid)
      : new requests.NSetRequest(mpps, step.uid);
  request.setDataset(new Dataset(step.dataset));
  request.on('response', (response) => {
    results.push({
      op: step.op,
      status: response.getStatus(),
      errorComment: response.getErrorComment() || '',
      command: response.getCommandDataset().getElements(),
    });
    finalSeen += 1;
  });
  client.addRequest(request);
}
client.on('associationRejected', (result) => {
  rejected = result;
});
client.on('networkError', (error) => {
  if (finalSeen === steps.length) {
    // dcmjs-dimse can race its own socket teardown after A-RELEASE-RP ("write after
    // end"); every response had arrived by then, so report it instead of failing.
    lateError = error.message;
    return;
  }
  console.error(`network error: ${error.message}`);
  process.exitCode = 2;
});
client.on('closed', () => {
  console.log(JSON.stringify({ rejected, results, lateError }));
});
client.send(host, Number(port), calling, called);
