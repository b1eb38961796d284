ALTER TABLE "drivers" ADD COLUMN "current_delivery_id" uuid;--> statement-breakpoint
-- Hand-added to the generated migration: take the holding delivery from the deliveries table and put every status right before the guard is checked.
UPDATE "drivers" SET "current_delivery_id" = a."id" FROM "deliveries" a WHERE a."driver_id" = "drivers"."id" AND a."status" IN ('ASSIGNED', 'PICKED_UP');--> statement-breakpoint
UPDATE "drivers" SET "status" = CASE
  WHEN "status" = 'OFFLINE' THEN 'OFFLINE'
  WHEN "current_delivery_id" IS NOT NULL THEN 'BUSY'
  WHEN "on_duty" AND "session_id" IS NOT NULL THEN 'AVAILABLE'
  ELSE 'OFFLINE' END;--> statement-breakpoint
ALTER TABLE "drivers" ADD CONSTRAINT "drivers_busy_iff_holding_delivery" CHECK ("drivers"."status" = 'OFFLINE' or ("drivers"."status" = 'BUSY') = ("drivers"."current_delivery_id" is not null));
