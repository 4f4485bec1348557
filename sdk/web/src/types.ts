// The beacon event as the SDK makes it (schemas/README.md): shared by the core, which makes events, and
// the sender, which queues them.

/** A beacon event: the protocol's required fields and the type's own. */
export interface QoeEvent {
  view_id: string;
  seq: number;
  type: EventType;
  ts: number;
  playhead_ms?: number;
  [field: string]: unknown;
}

export type EventType =
  | 'viewstart' | 'playrequest' | 'playing' | 'pause' | 'seeking' | 'seeked' | 'stall_start' | 'stall_end'
  | 'quality_change' | 'segment' | 'error' | 'heartbeat' | 'viewend';
