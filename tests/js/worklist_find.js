// A second, independent MWL SCU for the interoperability test: dcmjs-dimse's
// createWorklistFindRequest (what many Node.js integrations use), printed as JSON.
// usage: node worklist_find.js HOST PORT CALLING_AE CALLED_AE [QUERY_JSON]
'use strict';
const { Client, log, requests } = require('dcmjs-dimse');

log.setLevel('silent');

const [host, port, calling, called, queryJson] = process.argv.slice(2);
const query = queryJson ? JSON.parse(queryJson) : {};
const results = [];
let rejected = null;
let finalSeen = false;
let lateError = null;

const client = new Client();
const request = requests.CFindRequest.createWorklistFindRequest(query);
request.on('response', (response) => {
  const entry = { status: response.getStatus() };
  if (response.hasDataset()) {
    entry.dataset = response.getDataset().getElements();
  }
  results.push(entry);
  // Pending is 0xFF00/0xFF01; anything else ends the C-FIND (PS3.4 K.4.1.2).
  if (entry.status !== 0xff00 && entry.status !== 0xff01) {
    finalSeen = true;
  }
});
client.addRequest(request);
client.on('associationRejected', (result) => {
  rejected = result;
});
client.on('networkError', (error) => {
  if (finalSeen) {
    // dcmjs-dimse can race its own socket teardown after A-RELEASE-RP ("write after
    // end"); the C-FIND was complete by then, so report it instead of failing.
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
