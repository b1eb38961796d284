/* global process, setTimeout */
// A stand-in API thread for the restart test: says it listens, tells the main thread which port it
// was given (as an event), then dies.
import { parentPort, workerData } from 'node:worker_threads';

const given = workerData.config.HTTP_PORT;
parentPort.postMessage({ kind: 'event', name: 'driver:revoked', args: [{ driverId: `given-${given}` }] });
parentPort.postMessage({ kind: 'listening', port: given === 0 ? 45_678 : given });
setTimeout(() => process.exit(3), 50);
