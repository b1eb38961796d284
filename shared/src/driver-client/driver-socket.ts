import { io, type Socket } from 'socket.io-client';
import type { DriverAppEvents, DriverServerEvents } from '../events.js';

/**
 * The little of a Socket.IO client socket the driver client uses. The default is socket.io-client;
 * tests hand in a fake.
 */
export interface DriverSocket {
  readonly connected: boolean;
  connect(): unknown;
  disconnect(): unknown;
  on(event: string, listener: (...args: any[]) => void): unknown;
  /** With no arguments: removes every listener. */
  off(): unknown;
  emit(event: string, ...args: unknown[]): unknown;
}

export interface DriverSocketTarget {
  /** The hub's base URL, e.g. https://hub.example.com. */
  url: string;
  /** Socket.IO's path on the server, when the hub is behind a prefix. */
  path?: string;
  auth: { token: string };
  /** Bound on opening the connection. */
  timeoutMs: number;
}

/** Makes one socket for one connection attempt, not yet connecting. */
export type DriverSocketConnector = (target: DriverSocketTarget) => DriverSocket;

export const DRIVERS_NAMESPACE = '/drivers';

/**
 * socket.io-client, set up so the driver client governs: websocket only (no long-polling, which
 * needs sticky sessions), its own backoff instead of Socket.IO's reconnection, a fresh manager per
 * attempt so nothing buffered on a dead connection is replayed on the next one.
 */
export const socketIoConnector: DriverSocketConnector = ({ url, path, auth, timeoutMs }) => {
  const socket: Socket<DriverServerEvents, DriverAppEvents> = io(`${url.replace(/\/+$/, '')}${DRIVERS_NAMESPACE}`, {
    transports: ['websocket'],
    reconnection: false,
    autoConnect: false,
    forceNew: true,
    timeout: timeoutMs,
    auth,
    ...(path ? { path } : {}),
  });
  return socket as unknown as DriverSocket;
};
