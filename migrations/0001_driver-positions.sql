CREATE TABLE "driver_positions" (
	"driver_id" uuid PRIMARY KEY NOT NULL,
	"lat" double precision,
	"lng" double precision,
	"heading" double precision,
	"speed" double precision,
	"position_at" timestamp with time zone,
	"last_seen_at" timestamp with time zone
);
--> statement-breakpoint
DROP INDEX "drivers_available_idx";--> statement-breakpoint
DROP INDEX "drivers_live_idx";--> statement-breakpoint
ALTER TABLE "driver_positions" ADD CONSTRAINT "driver_positions_driver_id_drivers_id_fk" FOREIGN KEY ("driver_id") REFERENCES "public"."drivers"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
-- Hand-added to the generated migration: keep what the drivers table knew, and leave room in each page so position updates stay HOT.
INSERT INTO "driver_positions" ("driver_id", "lat", "lng", "heading", "speed", "position_at", "last_seen_at") SELECT "id", "lat", "lng", "heading", "speed", "position_at", "last_seen_at" FROM "drivers";--> statement-breakpoint
ALTER TABLE "driver_positions" SET (fillfactor = 70);--> statement-breakpoint
CREATE INDEX "drivers_live_idx" ON "drivers" USING btree ("id") WHERE "drivers"."status" <> 'OFFLINE';--> statement-breakpoint
ALTER TABLE "drivers" DROP COLUMN "lat";--> statement-breakpoint
ALTER TABLE "drivers" DROP COLUMN "lng";--> statement-breakpoint
ALTER TABLE "drivers" DROP COLUMN "heading";--> statement-breakpoint
ALTER TABLE "drivers" DROP COLUMN "speed";--> statement-breakpoint
ALTER TABLE "drivers" DROP COLUMN "position_at";--> statement-breakpoint
ALTER TABLE "drivers" DROP COLUMN "last_seen_at";