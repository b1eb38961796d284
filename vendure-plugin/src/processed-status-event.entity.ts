import { type DeepPartial, VendureEntity } from '@vendure/core';
import { Column, Entity, Index } from 'typeorm';

/**
 * One row per status event received, keyed by its `webhook-id`: the hub delivers at least once, and
 * a row here (kept across restarts) is what makes a repeat change nothing. Column types are spelled
 * out so the entity works without decorator metadata, and rows are filled after construction
 * (`Object.assign`), which holds whichever way the build defines class fields.
 */
@Entity('dispatch_hub_status_event')
export class ProcessedStatusEvent extends VendureEntity {
  constructor(input?: DeepPartial<ProcessedStatusEvent>) {
    super(input);
  }

  @Index({ unique: true })
  @Column({ type: 'varchar', length: 200 })
  webhookId!: string;

  @Index()
  @Column({ type: 'varchar', length: 200 })
  deliveryId!: string;

  @Column({ type: 'varchar', length: 40 })
  type!: string;

  @Column({ type: 'int' })
  sequence!: number;

  @Column({ type: 'varchar', length: 200 })
  orderCode!: string;

  /** applied, stale or unknown-order. */
  @Column({ type: 'varchar', length: 20 })
  outcome!: string;
}
