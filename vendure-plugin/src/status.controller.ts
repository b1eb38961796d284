import { Controller, HttpCode, Inject, Post, Req, Res } from '@nestjs/common';
import type { Response } from 'express';
import { STATUS_CONTROLLER_PATH, STATUS_ROUTE } from './constants.js';
import { DispatchInboundService } from './inbound.service.js';
import type { RequestWithRawBody } from './raw-body.middleware.js';

const header = (req: RequestWithRawBody, name: string): string | undefined => {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
};

/** `POST /dispatch-hub/events`: the hub's status events (set the hub's VENDURE_WEBHOOK_URL to it). */
@Controller(STATUS_CONTROLLER_PATH)
export class DispatchStatusController {
  constructor(@Inject(DispatchInboundService) private readonly inbound: DispatchInboundService) {}

  @Post(STATUS_ROUTE)
  @HttpCode(200)
  async receive(@Req() req: RequestWithRawBody, @Res() res: Response): Promise<void> {
    const answer = await this.inbound.receive({
      id: header(req, 'webhook-id'),
      timestamp: header(req, 'webhook-timestamp'),
      signature: header(req, 'webhook-signature'),
      body: req.rawBody ?? Buffer.alloc(0),
    });
    res.status(answer.status).json(answer.body);
  }
}
